"""Synthetic RGB scenes (`diffusa.data.scenes`): determinism, range, shape, the written folder read back by the
project's folder loader, the detail a 4x shrink loses, and a 4x upscaler trained on such a folder end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffusa.data import load_dataset, resize_images
from diffusa.data.scenes import render_scenes, scene_pixels, write_scene_folder
from diffusa.errors import DiffusaError


def test_same_seed_same_bytes_other_seed_other_scenes() -> None:
    a, b = scene_pixels(6, seed=3), scene_pixels(6, seed=3)
    assert a.dtype == np.uint8 and a.tobytes() == b.tobytes()
    assert np.array_equal(scene_pixels(3, seed=3), a[:3])  # scene i does not depend on n
    c = scene_pixels(6, seed=4)
    assert all(not np.array_equal(a[i], c[i]) for i in range(6))
    assert len({a[i].tobytes() for i in range(6)}) == 6  # the scenes of one seed differ from each other


def test_shape_range_and_colour() -> None:
    x = render_scenes(8, seed=1)
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() < -0.8 and x.max() > 0.8  # dark and bright pixels both
    assert (x[:, 0] - x[:, 2]).abs().mean() > 0.1  # colour, not grey: red and blue differ
    assert render_scenes(2, size=32).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 2, "size": 4}, {"n": 2, "seed": -1}, {"n": 1.5}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DiffusaError):
        render_scenes(**kwargs)


def test_folder_reads_back_as_rgb(tmp_path) -> None:
    paths = write_scene_folder(tmp_path / "scenes", 5, seed=2)
    assert [p.name for p in paths] == [f"scene_{i:05d}.png" for i in range(5)]
    with Image.open(paths[0]) as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    data = load_dataset(str(tmp_path / "scenes"), image_size=64)
    assert data.kind == "image" and len(data) == 5 and data.shape == (3, 64, 64) and data.labels is None
    assert torch.equal(data.x, render_scenes(5, seed=2))  # PNGs are lossless: bit for bit
    again = write_scene_folder(tmp_path / "again", 5, seed=2)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_a_4x_shrink_loses_detail() -> None:
    """Block averages 64 -> 16, bicubic back: mean squared error 0.018 (PSNR 23.7 dB) over 256 scenes of seeds 0, 1
    and 2 each (0.0175-0.0186 over the first 32; the least of any scene 0.003): the scenes are a real 4x task."""
    x = render_scenes(32)
    bicubic = F.interpolate(resize_images(x, 16), size=(64, 64), mode="bicubic", align_corners=False).clamp(-1, 1)
    mse = (bicubic - x).square().flatten(1).mean(1)
    assert mse.mean() > 0.012
    assert mse.min() > 0.002
    half = F.interpolate(resize_images(x, 32), size=(64, 64), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert (half - x).square().mean() < 0.6 * mse.mean()  # a 2x shrink loses less


def test_diffusa_scenes_writes_the_folder_and_refuses_one_that_holds_files(tmp_path, cli) -> None:
    folder = tmp_path / "made"
    r = cli("scenes", folder, "--n", "3", "--size", "16", "--seed", "1")
    assert r.code == 0 and "wrote 3 scenes (16x16 RGB, seed 1)" in r.out, r.err
    assert sorted(p.name for p in folder.iterdir()) == [f"scene_{i:05d}.png" for i in range(3)]
    before = (folder / "scene_00000.png").read_bytes()
    r = cli("scenes", folder, "--n", "3")  # a folder that holds files: refused without --force, nothing written
    assert r.code == 2 and "not empty" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert (folder / "scene_00000.png").read_bytes() == before
    (tmp_path / "file").write_text("x")
    r = cli("scenes", tmp_path / "file")
    assert r.code == 2 and "is not a folder" in r.err, r.err
    r = cli("scenes", tmp_path / "big", "--size", "100000")  # a size that would not fit in memory: one line
    assert r.code == 2 and "size must be at most 1024" in r.err and not (tmp_path / "big").exists(), r.err
    assert cli("scenes", folder, "--n", "2", "--size", "16", "--force").code == 0


def test_rgb_super_resolution_from_a_scene_folder(tmp_path, cli) -> None:
    """`diffusa train --data FOLDER --set data.super_resolution=4`, then `diffusa upscale LOW.png`: RGB through."""
    folder = tmp_path / "scenes"
    write_scene_folder(folder, 16, size=16)
    run = tmp_path / "run"
    r = cli("train", "--data", folder, "--out", run, "--steps", "2", "--batch-size", "4", "--quiet",
            "--set", "data.super_resolution=4", "--set", "data.image_size=16", "--set", "model.net.channels=8",
            "--set", "train.sample_n=2", "--set", "train.sample_steps=2", "--threads", "1")
    assert r.code == 0, r.err
    assert "[3, 16, 16]" in r.out
    low = tmp_path / "low.png"
    Image.fromarray(scene_pixels(1, size=16, seed=9)[0]).resize((4, 4), Image.Resampling.BOX).save(low)
    out = tmp_path / "up.npz"
    r = cli("upscale", low, "--model", run, "--steps", "2", "--out", out, "--no-strip", "--threads", "1")
    assert r.code == 0, r.err
    assert "4x4 -> 16x16" in r.out
    with np.load(out) as z:
        assert z["images"].shape == (1, 16, 16, 3) and z["images"].dtype == np.uint8
