"""The models that ship inside the package: they load, `diffusa generate` draws from them, a fixed seed
reproduces the outputs stored when they were exported, and the text model draws the digit it is asked for.
Exporting a run (with its autoencoder) gives a folder that loads from anywhere."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIGITS_OVERRIDES, train_run
from safetensors import safe_open

import diffusa
from diffusa.autoencoder import AutoencoderConfig
from diffusa.checkpoint import load_tensors
from diffusa.data import load_dataset
from diffusa.runs import load_run
from diffusa.shipped import SHIPPED, export_run, resolve_model
from diffusa.tasks.autoencoder import train_autoencoder

REFERENCE = Path(__file__).parent / "data" / "shipped_reference.safetensors"


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_model_loads_and_says_how_it_was_trained(name: str):
    path = resolve_model(name)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    guided = name == "mnist-pixel"  # it carries its autoguidance guide, a second network of the same size
    assert size < (1.1e7 if guided else 6e6)  # a few MB
    meta = json.loads((path / "config.json").read_text())
    for rec in (meta["shipped"], *([json.loads((path / "guide" / "config.json").read_text())["shipped"]]
                                    if guided else [])):
        assert rec["command"].startswith("python scripts/train_shipped_models.py") and rec["train_seconds"] > 0
    assert (meta.get("sampling", {}).get("guide") == "guide") == guided
    if guided:  # its default draw is autoguided at 1.5 against guide/: two networks per step
        s = diffusa.load(name)(n=2, steps=3, seed=0).settings
        assert (s["sampler"], s["eta"], s["autoguidance"], s["guide"], s["nfe"]) == (
            "dpmpp_2m_sde", 3.0, 1.5, "guide/model.safetensors", 6)
    run = load_run(path)
    text = name.startswith("mnist-text")  # the text model and its one-step student
    assert run.is_text == text and (run.decoder is not None) == text
    assert (meta["config"]["data"].get("super_resolution") == 4) == (name == "mnist-sr")
    assert run.mask_guided == (name == "mnist-inpaint")


def test_shipped_models_reproduce_their_stored_outputs():
    """Same seed, same samples: DPM-Solver++(2M), 5 steps, seed 0, as scripts/train_shipped_models.py stored them
    (tolerance 1e-3 in [-1, 1] leaves room for another CPU's float summation order)."""
    ref = load_tensors(REFERENCE)
    with safe_open(str(REFERENCE), "pt") as f:
        meta = f.metadata()
    n, steps, seed, scale = int(meta["n"]), int(meta["steps"]), int(meta["seed"]), float(meta["scale"])
    for name, prompt in (("mnist-text", meta["prompt"]), ("mnist-pixel", None)):
        x = diffusa.load(name)(prompt, n=n, sampler="dpmpp_2m", steps=steps, seed=seed,
                               guidance_scale=scale if prompt else None).samples
        assert x.shape == ref[name].shape == (n, 1, 28, 28)
        assert float((x - ref[name]).abs().max()) < 1e-3, name
    one = diffusa.load("mnist-text-1step")(meta["prompt"], n=n, steps=1, seed=seed)  # one call, its default scale
    assert one.settings["nfe"] == 1 and one.settings["sampler"] == "consistency"
    assert float((one.samples - ref["mnist-text-1step"]).abs().max()) < 1e-3
    sr = diffusa.load("mnist-sr")  # the upscaler, on the first held-out digits shrunk to 7x7
    low = sr.image_condition.low_res(load_dataset("mnist5k", "test").x[:n])
    x = sr.upscale(low, sampler="dpmpp_2m", steps=steps, seed=seed).samples
    assert low.shape == (n, 1, 7, 7) and x.shape == ref["mnist-sr"].shape == (n, 1, 28, 28)
    assert float((x - ref["mnist-sr"]).abs().max()) < 1e-3
    digits = load_dataset("mnist5k", "test").x[:n]  # the centre box redrawn with the inpainting model's defaults
    res = diffusa.load("mnist-inpaint").inpaint(digits, "center", steps=steps, seed=seed)
    assert res.settings["guidance_scale"] == 3.0 and res.settings["sampler"] == "ddpm"
    assert float((res.samples - ref["mnist-inpaint"]).abs().max()) < 1e-3


def test_the_shipped_inpainting_model_is_the_inpaint_default(cli, tmp_path: Path):
    """`diffusa inpaint` (and the API's inpaint route) without --model use mnist-inpaint with its measured mask
    guidance; `diffusa edit` keeps mnist-pixel; a prompt or a label still means the text model."""
    from diffusa.serve.schema import EditRequest, InpaintRequest
    from diffusa.shipped import default_model

    r = cli("inpaint", "mnist5k:0-1", "--mask", "center", "--steps", 3, "--out", tmp_path / "i.npz")
    assert r.code == 0 and "mnist-inpaint" in r.out, r.err
    ref = diffusa.load("mnist-inpaint").inpaint(load_dataset("mnist5k", "test").x[:2], "center", steps=3)
    assert np.array_equal(np.load(tmp_path / "i.npz")["samples"], ref.samples.numpy())
    assert ref.settings["guidance_scale"] == 3.0 and ref.settings["nfe"] == 3
    assert InpaintRequest(digit=0, mask="center").model_name == "mnist-inpaint"
    assert InpaintRequest(digit=0, mask="center", label=3).model_name == "mnist-text"
    assert EditRequest(digit=0).model_name == "mnist-pixel"
    assert (default_model("generate"), default_model("upscale"), default_model("inpaint", True)) == (
        "mnist-pixel", "mnist-sr", "mnist-text")


def test_generate_draws_the_requested_digits(cli, tmp_path: Path, digit_classifier_path: Path):
    """The shipped text model at its defaults (20 steps, w = 3): 8 samples for each of the ten prompts."""
    from diffusa.metrics import classify

    hits = 0
    for d, word in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]):
        r = cli("generate", f"the digit {word}", "--n", 8, "--out", tmp_path / f"{d}.npz")
        assert r.code == 0 and "mnist-text" in r.out, r.err
        x = torch.from_numpy(np.load(tmp_path / f"{d}.npz")["samples"])
        hits += int((classify(x)[1].argmax(1) == d).sum())
    assert hits / 80 >= 0.85


def test_generate_unconditional_and_errors(cli, tmp_path: Path):
    r = cli("generate", "--n", 4, "--steps", 5, "--out", tmp_path / "u.png")
    assert r.code == 0 and "mnist-pixel" in r.out and (tmp_path / "u.png").stat().st_size > 200, r.err
    for args, msg in ((["--model", "nope"], "the shipped models are mnist-pixel, mnist-text"),
                      (["--out", tmp_path / "x.jpg"], ".png"),
                      (["a 7", "--model", "mnist-pixel"], "takes no prompt"),
                      (["--model", "mnist-text"], "give a prompt"),
                      (["--guidance-scale", "7"], "is unconditional")):  # was silently ignored
        r = cli("generate", *args, "--n", 2, "--steps", 2)
        assert r.code == 2 and msg in r.err and r.err.count("\n") == 1, r.err


def test_export_carries_the_autoencoder_and_loads_after_a_move(tmp_path: Path, cli):
    ae = train_autoencoder("digits", tmp_path / "ae", AutoencoderConfig(channels=8, latent_channels=2), steps=5,
                           progress=False)
    run = train_run(tmp_path / "run", [*DIGITS_OVERRIDES, "train.steps=3", f"data.latent='{ae}'"])
    out = export_run(run, tmp_path / "shipped" / "m", {"command": "test", "train_seconds": 1.0})
    assert sorted(p.name for p in out.rglob("*")) == ["autoencoder", "config.json", "config.json",
                                                      "model.safetensors", "model.safetensors"]  # one layout
    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)
    shutil.rmtree(ae)
    shutil.rmtree(run)
    loaded = load_run(moved)
    assert json.loads((moved / "config.json").read_text())["latent"]["autoencoder"] == "autoencoder"
    assert loaded.to_data(torch.zeros(2, 2, 2, 2)).shape == (2, 1, 8, 8)
    r = cli("generate", "--model", moved, "--n", 3, "--steps", 2, "--out", tmp_path / "g.npz")
    assert r.code == 0 and np.load(tmp_path / "g.npz")["images"].shape == (3, 8, 8, 1), r.err


def fail_renames_onto(dest: Path, monkeypatch, restore_too: bool) -> None:
    """os.replace fails onto `dest` for the new model's temporary folder (".m.*"), and also for the restore of the
    old model when `restore_too`."""
    real = os.replace

    def replace(src, dst):
        if Path(dst) == dest and (restore_too or Path(src).name.startswith(f".{dest.name}.")):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_export_over_an_existing_model_replaces_it_and_keeps_it_if_the_swap_fails(tmp_path: Path, monkeypatch):
    run = train_run(tmp_path / "run", [*DIGITS_OVERRIDES, "train.steps=2"])
    dest = tmp_path / "shipped" / "m"
    export_run(run, dest, {"command": "first", "train_seconds": 1.0})
    export_run(run, dest, {"command": "second", "train_seconds": 1.0})
    assert json.loads((dest / "config.json").read_text())["shipped"]["command"] == "second"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]  # no temporary folder left behind

    fail_renames_onto(dest, monkeypatch, restore_too=False)
    with pytest.raises(OSError, match="disk full"):
        export_run(run, dest, {"command": "third", "train_seconds": 1.0})
    monkeypatch.undo()
    assert json.loads((dest / "config.json").read_text())["shipped"]["command"] == "second"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]

    fail_renames_onto(dest, monkeypatch, restore_too=True)  # the old model cannot even be put back
    with pytest.raises(OSError, match="disk full"):
        export_run(run, dest, {"command": "fourth", "train_seconds": 1.0})
    monkeypatch.undo()
    kept = list(dest.parent.glob(".m.old.*/m/config.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["shipped"]["command"] == "second"


def test_the_shipped_upscaler_is_the_upscale_default(cli, tmp_path: Path):
    """`diffusa upscale` without --model uses the shipped mnist-sr (4x); asking it to draw from noise is one line."""
    r = cli("upscale", "mnist5k:0-1", "--steps", 2, "--out", tmp_path / "up.npz")
    assert r.code == 0 and "mnist-sr: 7x7 -> 28x28, x4" in r.out, r.err
    assert np.load(tmp_path / "up.npz")["images"].shape[:3] == (2, 28, 28)
    r = cli("generate", "--model", "mnist-sr", "--n", 2, "--out", tmp_path / "g.png")
    assert r.code == 2 and "mnist-sr is a 4x super-resolution model" in r.err and r.err.count("\n") == 1, r.err
    assert not (tmp_path / "g.png").exists()


def test_the_upscalers_likelihood_is_refused_in_one_line():
    """Bits/dim are of unconditional (or label/text-conditional) images; an upscaler's would be conditional on its
    input: refused, not a traceback from the network asking for its condition."""
    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(diffusa.DiffusaError, match="conditioned on an image"):
        diffusa.load("mnist-sr").likelihood(x)
