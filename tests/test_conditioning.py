"""Class-conditional training (labels with dropout to the null label), the noise-aware classifier, and the
guidance flags of `diffusa sample` / `diffusa eval`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_OVERRIDES, train_run

from diffusa.classifier import guidance_log_prob, load_classifier
from diffusa.config import load_config
from diffusa.errors import DiffusaError
from diffusa.process import VP
from diffusa.tasks.classifier import train_classifier
from diffusa.train import diffusion_engine

COND = [*DIGITS_OVERRIDES, 'model.conditioning="class"']


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("cond") / "run", COND)


@pytest.mark.parametrize("dropout", [0.0, 0.5, 1.0])
def test_label_dropout_feeds_the_labels_or_the_null_label(tmp_path: Path, dropout: float):
    tr = diffusion_engine(load_config(overrides=[*COND, f"train.label_dropout={dropout}", "train.batch_size=256"]),
                          tmp_path / "run", progress=False)
    assert tr.task.conditioner.num_classes == 10 and tr.task.model.label_emb.num_embeddings == 11
    seen = {}

    def objective(den, x0, t, noise, cond=None):
        seen["x0"], seen["cond"] = x0, cond
        return den.output(x0, t, cond).flatten(1).mean(1) * 0 + 1.0

    tr.task.objective = objective
    tr._batches = iter([(torch.arange(256), tr.task.data.get(torch.arange(256)))])
    tr.train_step()
    cond, labels = seen["cond"].labels, tr.task.data.labels[:256]
    null = cond == 10
    assert torch.equal(cond[~null], labels[~null])  # every kept label is the example's own
    assert abs(float(null.double().mean()) - dropout) < 0.1


def test_conditioning_needs_labels(tmp_path: Path):
    with pytest.raises(DiffusaError, match="needs labelled data"):
        diffusion_engine(load_config(overrides=['data.name="moons"', 'model.conditioning="class"']), tmp_path / "r",
                         progress=False)
    with pytest.raises(DiffusaError, match=r"unknown model\.conditioning"):
        diffusion_engine(load_config(overrides=[*DIGITS_OVERRIDES, 'model.conditioning="words"']), tmp_path / "s",
                         progress=False)


def test_guidance_flags_end_to_end(cli, cond_run: Path, digits_run: Path, tmp_path: Path):
    r = cli("sample", cond_run, "--n", 12, "--steps", 3, "--label", 3, "--guidance-scale", 2,
            "--out", tmp_path / "g.png")
    assert r.code == 0 and (tmp_path / "g.png").stat().st_size > 100, r.err
    r = cli("eval", cond_run, "--n", 20, "--steps", 3, "--label", "all", "--guidance-scale", 3)
    assert r.code == 0, r.err
    m = json.loads(r.out)
    assert 0 <= m["conditional_accuracy"] <= 1 and m["guidance_scale"] == 3
    # same seed, same samples; w = 1 is the plain conditional model
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert cli("sample", cond_run, "--n", 6, "--steps", 3, "--label", 5, "--out", a).code == 0
    assert cli("sample", cond_run, "--n", 6, "--steps", 3, "--label", 5, "--guidance-scale", 1, "--out", b).code == 0
    import numpy as np

    assert np.allclose(np.load(a)["samples"], np.load(b)["samples"], atol=1e-6)
    for args, msg in [(["--label", 12], "a class in 0..9"), (["--guidance-scale", 2], "needs a class"),
                      (["--label", "x"], "a class in 0..9")]:
        r = cli("sample", cond_run, "--n", 4, "--steps", 2, *args, "--out", tmp_path / "x.png")
        assert r.code == 2 and msg in r.err and r.err.count("\n") == 1, r.err
    r = cli("sample", digits_run, "--n", 4, "--steps", 2, "--label", 1, "--out", tmp_path / "x.png")
    assert r.code == 2 and "is unconditional" in r.err and "Traceback" not in r.err


def test_noise_aware_classifier_learns_and_guides(cli, digits_run: Path, tmp_path: Path):
    out = train_classifier(digits_run, tmp_path / "clf", steps=150, batch_size=64, progress=False)
    meta = json.loads((out / "config.json").read_text())
    acc = meta["held_out_accuracy"]
    assert acc["t=0.1"] >= 0.6 and acc["t=0.1"] > acc["t=0.9"], acc  # chance is 0.1; noise erases the class
    net, _, _ = load_classifier(out)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(net(x, torch.zeros(3)), load_classifier(out)[0](x, torch.zeros(3)))
    with pytest.raises(DiffusaError, match="trained under process"):
        guidance_log_prob(out, VP())
    r = cli("sample", digits_run, "--n", 6, "--steps", 3, "--label", "all", "--classifier", out,
            "--classifier-scale", 3, "--out", tmp_path / "c.png")
    assert r.code == 0, r.err
    # a damaged classifier is one line, not a traceback
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    r = cli("sample", digits_run, "--n", 2, "--steps", 2, "--label", 1, "--classifier", bad, "--out",
            tmp_path / "x.png")
    assert r.code == 2 and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    r = cli("train-classifier", digits_run, "--out", out, "--steps", 1)
    assert r.code == 2 and "already holds a classifier" in r.err
