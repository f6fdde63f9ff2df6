"""Image folders streamed from disk: the same batches as the resident folder, bit for bit; the auto choice;
errors met in a worker process arrive as one line naming the file."""

from __future__ import annotations

import gc
import itertools
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffusa.data.stream as data_stream
from diffusa.data import Dataset, batches, load_dataset
from diffusa.data.stream import FolderStream
from diffusa.errors import DiffusaError

N, SIDE = 40, 12


def _write(folder: Path, n: int = N, rgb: bool = True, seed: int = 0) -> list[np.ndarray]:
    """n random PNGs in two sub-folders (the listing is recursive and sorted), with captions."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (SIDE, SIDE, 3) if rgb else (SIDE, SIDE), dtype=np.uint8) for _ in range(n)]
    rows = []
    for i, a in enumerate(arrays):
        rel = f"{'ab'[i % 2]}/{i:03d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / rel)
        rows.append(json.dumps({"file": rel, "caption": f"image {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return arrays


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "pngs"
    _write(path)
    return path


def _take(it, k: int) -> list:
    return list(itertools.islice(it, k))


def _same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for (ia, xa), (ib, xb) in zip(a, b, strict=True):
        assert ia.dtype == ib.dtype == torch.int64 and torch.equal(ia, ib)
        assert xa.dtype == xb.dtype == torch.float32 and torch.equal(xa, xb)


def test_stream_matches_resident(folder: Path) -> None:
    resident = load_dataset(str(folder), stream="off")
    streamed = load_dataset(str(folder), stream="on")
    assert isinstance(resident, Dataset) and isinstance(streamed, FolderStream)
    assert streamed.name == resident.name == "pngs" and len(streamed) == N and streamed.shape == (3, SIDE, SIDE)
    assert streamed.kind == "image" and streamed.labels is None and streamed.num_classes == 0
    assert streamed.captions == resident.captions and streamed.captions[7] == "image 14"  # a/000, a/002, ...: sorted
    assert resident.x.min() == -1 and resident.x.max() == 1
    # 40 images, batch 16: 2 batches per epoch, so 7 steps cross three epochs (fresh permutations)
    want = _take(resident.loader(16, seed=3), 7)
    assert all(torch.equal(i, b) for (i, _), b in zip(want, batches(N, 16, 3), strict=False))
    _same(_take(streamed.loader(16, seed=3), 7), want)
    idx = torch.tensor([5, 0, 39, 5])
    assert torch.equal(streamed.get(idx), resident.x[idx])
    assert torch.equal(streamed.get(idx), resident.get(idx))


def test_stream_resume_and_ranks(folder: Path) -> None:
    resident = load_dataset(str(folder), stream="off")
    streamed = load_dataset(str(folder), stream="on")
    _same(_take(streamed.loader(16, seed=1, start_step=5), 4), _take(resident.loader(16, seed=1, start_step=5), 4))
    whole = _take(resident.loader(16, seed=1, start_step=3), 3)
    parts = [_take(streamed.loader(16, seed=1, start_step=3, rank=r, world=2), 3) for r in range(2)]
    _same(parts[0], _take(resident.loader(16, seed=1, start_step=3, rank=0, world=2), 3))
    for k, (idx, x) in enumerate(whole):
        assert len(parts[0][k][0]) == len(parts[1][k][0]) == 8
        assert torch.equal(torch.cat([parts[0][k][0], parts[1][k][0]]), idx)
        assert torch.equal(torch.cat([parts[0][k][1], parts[1][k][1]]), x)


def test_stream_in_process_and_batch_larger_than_folder(folder: Path) -> None:
    resident = load_dataset(str(folder), stream="off")
    streamed = load_dataset(str(folder), stream="on")
    streamed.num_workers = 0
    _same(_take(streamed.loader(64, seed=2), 2), _take(resident.loader(64, seed=2), 2))  # repeats indices


def test_stream_resize_and_grayscale(folder: Path) -> None:
    for kwargs in ({"image_size": 7}, {"grayscale": True}, {"image_size": 16, "grayscale": True}):
        resident = load_dataset(str(folder), stream="off", **kwargs)
        streamed = load_dataset(str(folder), stream="on", **kwargs)
        assert streamed.shape == resident.shape
        _same(_take(streamed.loader(8, seed=0, start_step=2), 2), _take(resident.loader(8, seed=0, start_step=2), 2))
    assert load_dataset(str(folder), stream="on", image_size=7).shape == (3, 7, 7)
    assert load_dataset(str(folder), stream="on", grayscale=True).shape == (1, SIDE, SIDE)


def test_grayscale_folder_streams_one_channel(tmp_path: Path) -> None:
    arrays = _write(tmp_path, 6, rgb=False)
    streamed = load_dataset(str(tmp_path), stream="on")
    assert streamed.shape == (1, SIDE, SIDE)
    first = sorted(range(6), key=lambda i: f"{'ab'[i % 2]}/{i:03d}.png")[0]  # a/000.png
    assert torch.equal(streamed.get(torch.tensor([0]))[0, 0], torch.from_numpy(arrays[first]).float() / 127.5 - 1)


def test_streaming_dataset_has_no_x(folder: Path) -> None:
    with pytest.raises(DiffusaError, match=r"streams its 40 images.*data.stream='off'"):
        _ = load_dataset(str(folder), stream="on").x


def test_auto_streams_above_the_threshold(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = N * 3 * SIDE * SIDE * 4
    monkeypatch.setattr(data_stream, "stream_threshold", lambda: decoded)
    assert isinstance(load_dataset(str(folder)), Dataset)  # exactly at the threshold: resident
    monkeypatch.setattr(data_stream, "stream_threshold", lambda: decoded - 1)
    assert isinstance(load_dataset(str(folder)), FolderStream)
    assert isinstance(load_dataset(str(folder), stream="off"), Dataset)
    # the estimate follows image_size and grayscale: 1 x 6 x 6 per image is 16x smaller
    monkeypatch.setattr(data_stream, "stream_threshold", lambda: decoded // 12)
    assert isinstance(load_dataset(str(folder), image_size=6, grayscale=True), Dataset)
    assert isinstance(load_dataset(str(folder), image_size=6), FolderStream)


def test_default_threshold_is_an_eighth_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_stream, "memory_bytes", lambda: 16 << 30)
    assert data_stream.stream_threshold() == 2 << 30
    monkeypatch.setattr(data_stream, "memory_bytes", lambda: None)
    assert data_stream.stream_threshold() == 1 << 30
    monkeypatch.undo()
    mem = data_stream.memory_bytes()
    assert mem is None or mem > 1 << 26


@pytest.mark.parametrize("workers", [2, 0])
def test_wrong_size_file_met_while_streaming(tmp_path: Path, workers: int) -> None:
    _write(tmp_path, 20)
    (tmp_path / "captions.jsonl").unlink()
    Image.fromarray(np.zeros((10, 9, 3), np.uint8)).save(tmp_path / "b" / "odd.png")
    streamed = load_dataset(str(tmp_path), stream="on")  # only the first file is read up front
    streamed.num_workers = workers
    with pytest.raises(DiffusaError) as info:
        _take(streamed.loader(8, seed=0), 6)  # 21 files, 2 batches per epoch: 3 epochs meet every file
    msg = str(info.value)
    assert "\n" not in msg and "odd.png is 9x10" in msg and "12x12" in msg and "data.image_size" in msg
    with pytest.raises(DiffusaError, match=r"odd\.png"):
        streamed.get(torch.arange(21))
    resized = load_dataset(str(tmp_path), stream="on", image_size=8)
    resized.num_workers = workers
    assert torch.equal(resized.get(torch.arange(21)), load_dataset(str(tmp_path), stream="off", image_size=8).x)


def test_unreadable_file_met_while_streaming(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "b" / "zz.png").write_bytes(b"not a png" * 10)
    streamed = load_dataset(str(tmp_path), stream="on")
    with pytest.raises(DiffusaError) as info:
        _take(streamed.loader(10, seed=0), 4)
    assert "\n" not in str(info.value) and "cannot read image" in str(info.value) and "zz.png" in str(info.value)


def test_workers_end_with_the_loader(folder: Path) -> None:
    streamed = load_dataset(str(folder), stream="on")
    it = streamed.loader(16, seed=0)
    next(it)
    assert len(multiprocessing.active_children()) >= 2
    it.close()
    del it
    gc.collect()
    assert multiprocessing.active_children() == []


def test_stream_choice_errors(tmp_path: Path, folder: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 2), np.float32))
    for name in ("mnist5k", "moons", str(tmp_path / "a.npz")):
        with pytest.raises(DiffusaError, match=r"data\.stream='on' streams image folders"):
            load_dataset(name, stream="on")
    for name in ("moons", str(tmp_path / "a.npz")):
        assert isinstance(load_dataset(name, stream="off"), Dataset)
        assert isinstance(load_dataset(name, stream="auto"), Dataset)
    with pytest.raises(DiffusaError, match=r"unknown data\.stream 'yes'; known: auto, on, off"):
        load_dataset(str(folder), stream="yes")
    with pytest.raises(DiffusaError, match="no image files"):
        load_dataset(str(tmp_path), stream="on")


def test_cli_stream_flag_sets_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusa.config
    from diffusa.cli import build_parser

    seen = []
    real = diffusa.config.load_config

    class StopError(Exception):
        pass

    def load_and_stop(*args, **kwargs):  # cmd_train builds its config, then we stop before training
        seen.append(real(*args, **kwargs))
        raise StopError

    monkeypatch.setattr(diffusa.config, "load_config", load_and_stop)
    for flag, want in ((["--stream", "on"], "on"), (["--stream", "off"], "off"), ([], "auto")):
        args = build_parser().parse_args(["train", "--data", "x", "--out", "y", *flag])
        with pytest.raises(StopError):
            args.func(args)
        assert seen[-1].data.stream == want and seen[-1].data.name == "x"


def test_cli_trains_on_a_streamed_folder(cli, tmp_path: Path) -> None:
    from diffusa.runs import read_run_meta

    _write(tmp_path / "imgs", 24)
    (tmp_path / "imgs" / "captions.jsonl").unlink()
    quick = ["--steps", "3", "--batch-size", "8", "--quiet", "--set", "train.sample_steps=2", "--set",
             "train.sample_n=4", "--set", "model.net.channels=8"]
    for stream in ("on", "off"):
        res = cli("train", "--data", tmp_path / "imgs", "--out", tmp_path / stream, "--stream", stream, *quick)
        assert res.code == 0, res.err
        assert read_run_meta(tmp_path / stream)["config"]["data"]["stream"] == stream
    logs = [(tmp_path / s / "log.jsonl").read_text().splitlines() for s in ("on", "off")]
    losses = [[json.loads(line)["loss"] for line in log] for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) >= 1  # the same batches: the same losses


def test_mixed_gray_and_rgb_folder_has_the_same_channels_streamed_or_not(tmp_path: Path) -> None:
    """One rule for both paths: grayscale only when every file is; a gray file first does not make it gray."""
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("L", (8, 8), 100).save(folder / "a.png")
    Image.new("RGB", (8, 8), (10, 200, 30)).save(folder / "b.png")
    resident, streamed = (load_dataset(str(folder), stream=s) for s in ("off", "on"))
    assert resident.shape == streamed.shape == (3, 8, 8)
    assert torch.equal(resident.get(torch.arange(2)), streamed.get(torch.arange(2)))
