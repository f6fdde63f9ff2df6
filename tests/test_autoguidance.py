"""Autoguidance (Karras et al. 2024) through the layers: the snapshot a run keeps, the pipeline, the CLI.

The formula itself is checked against the closed form for Gaussians in test_guidance.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIGITS_OVERRIDES, train_run
from test_cli import assert_one_line_error

import diffusa
from diffusa.checkpoint import load_tensors, save_tensors
from diffusa.config import load_config
from diffusa.engine.loop import guide_step
from diffusa.errors import DiffusaError

KW = {"n": 6, "sampler": "dpmpp_2m_sde", "steps": 4, "seed": 3}


def test_a_run_keeps_its_weights_at_guide_at_of_its_steps(digits_run: Path, tmp_path: Path) -> None:
    """20 steps at the default guide_at 0.25: snapshots/step_5, the averaged weights of that step (not the final
    ones), with its step and training seconds; guide_at = 0 keeps none."""
    assert guide_step(load_config(overrides=["train.steps=20"]).train) == 5
    assert guide_step(load_config(overrides=["train.steps=3", "train.guide_at=0.1"]).train) == 1
    assert guide_step(load_config(overrides=["train.guide_at=0"]).train) is None
    snap = digits_run / "snapshots" / "step_5.safetensors"
    weights, final = load_tensors(snap), load_tensors(digits_run / "model.safetensors")
    assert weights.keys() == final.keys()
    assert any(not torch.equal(weights[k], final[k]) for k in weights)
    from safetensors import safe_open

    with safe_open(str(snap), "pt") as f:
        meta = f.metadata()
    assert meta["step"] == "5" and float(meta["train_seconds"]) > 0
    none = train_run(tmp_path / "run", [*DIGITS_OVERRIDES, "train.steps=4", "train.guide_at=0"])
    assert not (none / "snapshots").exists()
    with pytest.raises(DiffusaError, match="guide_at = 0"):
        diffusa.load(none)(autoguidance=2.0, **KW)


def test_autoguided_draws_repeat_count_both_networks_and_reduce_to_the_model(digits_run: Path) -> None:
    pipe = diffusa.load(digits_run)
    plain = pipe(**KW)
    guided = pipe(autoguidance=2.0, **KW)
    assert guided.settings["nfe"] == 2 * plain.settings["nfe"] == 2 * 4 * 1  # dpmpp_2m_sde: one call per step
    assert guided.settings["autoguidance"] == 2.0
    assert guided.settings["guide"].endswith("snapshots/step_5.safetensors")
    assert torch.equal(pipe(autoguidance=2.0, **KW).samples, guided.samples)  # same seed, same samples
    assert (guided.samples - plain.samples).abs().max() > 1e-3
    for same in ({"guide": "step_5"}, {"guide": 5}, {"guide": str(digits_run / "snapshots" / "step_5.safetensors")}):
        assert torch.equal(pipe(autoguidance=2.0, **same, **KW).samples, guided.samples)
    # w = 1 is the model alone; the model guided by itself is the model at any w
    assert torch.equal(pipe(autoguidance=1.0, **KW).samples, plain.samples)
    assert plain.settings["autoguidance"] is None
    itself = pipe(autoguidance=3.0, guide=str(digits_run), **KW)
    assert torch.allclose(itself.samples, plain.samples, atol=1e-5)
    # w = 0 is the snapshot alone
    snapshot = diffusa.load(digits_run)
    snapshot.run.net.load_state_dict(load_tensors(digits_run / "snapshots" / "step_5.safetensors"))
    assert torch.allclose(pipe(autoguidance=0.0, **KW).samples, snapshot(**KW).samples, atol=1e-5)


def test_autoguidance_combines_with_classifier_free_guidance(tmp_path: Path) -> None:
    run = train_run(tmp_path / "run", [*DIGITS_OVERRIDES, 'model.conditioning="class"', "train.steps=8"])
    pipe = diffusa.load(run)
    cfg = pipe(label="all", guidance_scale=2.0, **KW)
    both = pipe(label="all", guidance_scale=2.0, autoguidance=2.0, **KW)
    assert both.settings["nfe"] == 2 * cfg.settings["nfe"]  # each of the two batched calls, on both networks
    assert (both.samples - cfg.samples).abs().max() > 1e-3


@pytest.mark.parametrize("kwargs, fragment", [
    ({"guide": "step_5"}, "give autoguidance=W"),
    ({"autoguidance": 2.0, "guide": "step_999"}, "no snapshot step_999 (kept: step_5)"),
    ({"autoguidance": float("nan")}, "autoguidance must be a finite number"),
    ({"autoguidance": True}, "autoguidance must be a finite number"),
    ({"autoguidance": 2.0, "guide": "missing.safetensors"}, "does not exist"),
    ({"autoguidance": 2.0, "guide": "no/such/run"}, "does not exist"),
    ({"autoguidance": 2.0, "guide": "step_\u00b2"}, "does not exist"),  # a digit int() refuses: a run's name
])
def test_bad_autoguidance_is_one_error_naming_it(digits_run: Path, kwargs: dict, fragment: str) -> None:
    with pytest.raises(DiffusaError, match=re.escape(fragment)) as info:
        diffusa.load(digits_run)(**{**KW, **kwargs})
    assert "\n" not in str(info.value)


def test_a_guide_of_other_data_or_process_is_refused(digits_run: Path, moons_run: Path, tmp_path: Path) -> None:
    pipe = diffusa.load(digits_run)
    with pytest.raises(DiffusaError, match="a guide must model the same data"):
        pipe(autoguidance=2.0, guide=str(moons_run), **KW)
    flow = train_run(tmp_path / "flow", [*DIGITS_OVERRIDES, "train.steps=2", 'process.name="flow"'])
    with pytest.raises(DiffusaError, match=r"process|parameterization"):
        pipe(autoguidance=2.0, guide=str(flow), **KW)


def test_cli_autoguidance_matches_the_pipeline_and_refuses_in_one_line(cli, digits_run: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    res = cli("sample", digits_run, "--n", 6, "--sampler", "dpmpp_2m_sde", "--steps", 4, "--seed", 3,
              "--autoguidance", 2, "--out", out)
    assert res.code == 0 and "autoguidance 2 (8 network calls)" in res.out, res.err
    want = diffusa.load(digits_run)(autoguidance=2.0, **KW).images
    assert np.array_equal(np.load(out)["images"], want)
    assert_one_line_error(cli("sample", digits_run, "--guide", "step_5", "--out", tmp_path / "x.npz"),
                          "autoguidance")
    assert_one_line_error(cli("sample", digits_run, "--autoguidance", 2, "--guide", "step_7",
                              "--out", tmp_path / "x.npz"), "no snapshot step_7")
    assert_one_line_error(cli("generate", "a 7", "--autoguidance", 2, "--n", 2, "--out", tmp_path / "g.png"),
                          "(kept: none)")  # mnist-text ships no snapshot and no guide
    assert_one_line_error(cli("eval", digits_run, "--bpd", "--autoguidance", 2), "--autoguidance")
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "g.png").exists()


def test_edits_are_autoguided_too(cli, digits_run: Path, tmp_path: Path) -> None:
    """img2img and inpainting (the RePaint loop) take autoguidance as drawing does: both networks counted, the
    settings recorded, same seed same output, w = 1 the model alone; the CLI's edit and inpaint pass it on."""
    from diffusa.data import load_dataset

    pipe = diffusa.load(digits_run)
    x = load_dataset("digits", "test").x[:3]
    kw = {"sampler": "ddim", "steps": 6, "seed": 2}
    for edit in (lambda **k: pipe.img2img(x, 0.7, **kw, **k),
                 lambda **k: pipe.inpaint(x, "top", jump_length=2, jump_n_sample=2, **kw, **k)):
        plain, guided = edit(), edit(autoguidance=2.0)
        assert guided.settings["nfe"] == 2 * plain.settings["nfe"] > 0
        assert guided.settings["autoguidance"] == 2.0 and guided.settings["guide"].endswith("step_5.safetensors")
        assert plain.settings["autoguidance"] is None and plain.settings["guide"] is None
        assert torch.equal(edit(autoguidance=2.0).samples, guided.samples)
        assert (guided.samples - plain.samples).abs().max() > 1e-3
        assert torch.equal(edit(autoguidance=1.0).samples, plain.samples)
    keep = ~torch.zeros(8, 8, dtype=torch.bool).index_fill_(0, torch.arange(4), True)
    assert torch.equal(guided.samples[..., keep], x[..., keep])  # the inpainted output keeps the known region
    src = tmp_path / "x.npz"
    np.savez(src, images=((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    for args in (("edit", src, "--strength", 0.7), ("inpaint", src, "--mask", "top", "--jump-length", 2,
                                                     "--jump-n-sample", 2)):
        out = tmp_path / f"{args[0]}.npz"
        res = cli(*args, "--model", digits_run, "--sampler", "ddim", "--steps", 6, "--seed", 2, "--autoguidance", 2,
                  "--out", out, "--no-strip")
        assert res.code == 0, res.err
        fn = pipe.img2img if args[0] == "edit" else pipe.inpaint
        extra = {"strength": 0.7} if args[0] == "edit" else {"mask": "top", "jump_length": 2, "jump_n_sample": 2}
        want = fn(np.load(src)["images"], **extra, **kw, autoguidance=2.0).images
        assert np.array_equal(np.load(out)["images"], want)


def test_a_recommended_autoguidance_goes_with_its_sampler(cli, digits_run: Path, tmp_path: Path) -> None:
    """config.json "sampling" may carry "autoguidance": W and "guide": a path in the model's folder (the shipped
    mnist-pixel: w 1.5 against a ten-minute run, docs/demo.md). A draw that names neither is autoguided against that
    guide (not the snapshot the run kept) with the recommended sampler, not with another, not at few steps where a
    "few_steps" table takes over, and not in an edit unless asked; w = 1 draws without; a w given uses the model's
    own guide; settings name it relative to the model's folder; the command line draws the same."""
    from shutil import copytree

    from test_recommended import with_sampling

    entry = {"sampler": "dpmpp_2m_sde", "steps": 4, "autoguidance": 2.0, "guide": "guide.safetensors"}
    run = with_sampling(digits_run, tmp_path / "ag", entry)
    weights = load_tensors(digits_run / "snapshots" / "step_5.safetensors")  # a guide of its own, not step_5
    save_tensors(run / "guide.safetensors", {k: 0.5 * v for k, v in weights.items()})
    pipe, plain_pipe = diffusa.load(run), diffusa.load(digits_run)
    a = pipe(n=6, seed=3)
    assert (a.settings["autoguidance"], a.settings["guide"], a.settings["nfe"]) == (2.0, "guide.safetensors", 8)
    assert torch.equal(a.samples, plain_pipe(autoguidance=2.0, guide=str(run / "guide.safetensors"), **KW).samples)
    assert (a.samples - plain_pipe(autoguidance=2.0, **KW).samples).abs().max() > 1e-3  # not the kept snapshot
    off = pipe(n=6, seed=3, autoguidance=1.0)
    assert off.settings["autoguidance"] is None and torch.equal(off.samples, plain_pipe(**KW).samples)
    other = pipe(n=6, seed=3, sampler="ddim")  # another sampler: not autoguided, as a recommended eta
    assert other.settings["autoguidance"] is None and other.settings["nfe"] == 4
    edited = pipe.img2img(a.samples, 0.5, seed=3)  # measured on draws from noise: an edit only when asked
    assert edited.settings["sampler"] == "dpmpp_2m_sde" and edited.settings["autoguidance"] is None
    asked = pipe.img2img(a.samples, 0.5, seed=3, autoguidance=2.0)  # ... then against the model's guide
    assert asked.settings["guide"] == "guide.safetensors" and asked.settings["nfe"] == 2 * edited.settings["nfe"]
    few = with_sampling(run, tmp_path / "few", {**entry, "few_steps": {"max_steps": 2, "sampler": "dpmpp_2m_sde"}})
    drawn = diffusa.load(few)(n=6, seed=3, steps=2)  # the few-step table's choice carries no autoguidance
    assert drawn.settings["autoguidance"] is None and drawn.settings["nfe"] == 2
    assert diffusa.load(few)(n=6, seed=3).settings["autoguidance"] == 2.0  # at the recommended steps it does
    # a guide folder in the model's folder; a w given takes the model's own guide
    copytree(digits_run, run / "guide")
    meta = json.loads((run / "config.json").read_text())
    meta["sampling"]["guide"] = "guide"
    (run / "config.json").write_text(json.dumps(meta))
    itself = diffusa.load(run)(n=6, seed=3, autoguidance=3.0)  # guided by the same weights: the model alone
    assert itself.settings["guide"] == "guide/model.safetensors"
    assert torch.allclose(itself.samples, plain_pipe(**KW).samples, atol=1e-5)
    res = cli("sample", run, "--n", 6, "--seed", 3, "--out", tmp_path / "s.npz")
    assert res.code == 0 and "autoguidance 2 (8 network calls)" in res.out, res.err
    want = diffusa.load(run)(n=6, seed=3).images
    assert np.array_equal(np.load(tmp_path / "s.npz")["images"], want)


def test_a_bad_recommended_autoguidance_is_one_line_when_read(digits_run: Path, tmp_path: Path) -> None:
    """w not > 0, a guide without a w, a path out of the folder (by '..', absolutely or through a link), the model
    itself, a folder without weights, nothing there, or no guide and no snapshot kept: one line naming the key, when
    the model is read."""
    from test_recommended import with_sampling

    entry = {"sampler": "dpmpp_2m_sde", "steps": 4, "autoguidance": 2.0, "guide": "guide"}
    link, empty = tmp_path / "bad-link", tmp_path / "bad-empty"
    refused = (({**entry, "autoguidance": 0}, "sampling.autoguidance must be a finite number > 0"),
               ({**entry, "autoguidance": "2"}, "sampling.autoguidance must be a finite number > 0"),
               ({"sampler": "ddim", "steps": 4, "guide": "guide"}, "sampling.guide names autoguidance's weaker model"),
               ({**entry, "autoguidance": None}, "sampling.guide names autoguidance's weaker model"),
               ({**entry, "guide": "../elsewhere"}, "sampling.guide must be a path inside the model's folder"),
               ({**entry, "guide": str(digits_run)}, "sampling.guide must be a path inside the model's folder"),
               ({**entry, "guide": "a\x00b"}, "sampling.guide must be a path inside the model's folder"),
               ({**entry, "guide": "."}, "sampling.guide '.' is the model itself"),
               ({**entry, "guide": "model.safetensors"}, "sampling.guide 'model.safetensors' is the model itself"),
               ({**entry, "guide": "missing"}, "sampling.guide 'missing' is neither a run folder nor a .safetensors"),
               ({**entry, "guide": "a\nb"}, "sampling.guide 'a\\nb' is neither"))
    for i, (bad, message) in enumerate(refused):
        with pytest.raises(DiffusaError, match=re.escape(message)) as info:
            diffusa.load(with_sampling(digits_run, tmp_path / f"bad{i}", bad))
        assert "\n" not in str(info.value) and str(info.value).startswith(str(tmp_path / f"bad{i}" / "config.json"))
    with_sampling(digits_run, link, entry)
    (link / "guide").symlink_to(digits_run, target_is_directory=True)  # a run, but outside the folder
    with_sampling(digits_run, empty, entry)
    (empty / "guide").mkdir()
    shutil.copyfile(digits_run / "config.json", empty / "guide" / "config.json")
    nosnap = with_sampling(digits_run, tmp_path / "bad-nosnap", {k: v for k, v in entry.items() if k != "guide"})
    shutil.rmtree(nosnap / "snapshots")
    for folder, message in ((link, "leads out of the model's folder"),
                            (empty, "is a folder without config.json and model.safetensors"),
                            (nosnap, "names no sampling.guide and the model kept no snapshot")):
        with pytest.raises(DiffusaError, match=re.escape(message)) as info:
            diffusa.load(folder)
        assert "\n" not in str(info.value)
