"""`diffusa ...`: help, one-line errors with a non-zero exit and no traceback, and the happy paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusa.data import BUILTIN, unit_to_uint8

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_TRAIN = ["--quiet", "--set", "train.sample_every=0", "--set", "train.sample_steps=2",
              "--set", "model.net.hidden=16", "--set", "model.net.depth=1", "--batch-size", "32"]


def assert_one_line_error(res, *fragments: str) -> str:
    assert res.code != 0, (res.out, res.err)
    assert "Traceback" not in res.err, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# -- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["eval"], ["forward"]])
def test_help(cli, command: list[str]) -> None:
    res = cli(*command, "--help")
    assert res.code == 0
    assert "usage: diffusa" in res.out and res.err == ""


def test_no_command_is_a_usage_error(cli) -> None:
    assert_one_line_error(cli())
    assert cli().code == 2


def test_entry_point_in_a_subprocess(tmp_path: Path) -> None:
    """The installed script (or `python -m diffusa.cli`): exit codes and stderr as a user sees them."""
    script = Path(sys.executable).parent / "diffusa"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "diffusa.cli"]
    ok = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "train" in ok.stdout
    bad = subprocess.run([*cmd, "sample", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [f"diffusa sample: error: run folder {tmp_path / 'nope'} does not exist; "
                                               "the shipped models are mnist-pixel, mnist-text, mnist-sr, "
                                               "mnist-text-1step, mnist-inpaint"]


# -- one-line errors ---------------------------------------------------------------------------


def _damaged_copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_missing_run_folder(cli, tmp_path: Path) -> None:
    for command in ("sample", "eval"):
        extra = ["--out", tmp_path / "x.png"] if command == "sample" else []
        assert_one_line_error(cli(command, tmp_path / "absent", *extra), "does not exist")


def test_truncated_model_file(cli, moons_run: Path, tmp_path: Path) -> None:
    run = _damaged_copy(moons_run, tmp_path / "run")
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli("sample", run, "--out", tmp_path / "x.png"), "model.safetensors")
    assert not (tmp_path / "x.png").exists()


def test_foreign_model_file(cli, moons_run: Path, digits_run: Path, tmp_path: Path) -> None:
    run = _damaged_copy(moons_run, tmp_path / "run")
    shutil.copy(digits_run / "model.safetensors", run / "model.safetensors")
    assert_one_line_error(cli("sample", run, "--out", tmp_path / "x.npz"), "model.safetensors", "another model")


def test_config_from_another_version(cli, moons_run: Path, tmp_path: Path) -> None:
    run = _damaged_copy(moons_run, tmp_path / "run")
    meta = json.loads((run / "config.json").read_text())
    meta["format_version"] = 99
    (run / "config.json").write_text(json.dumps(meta))
    assert_one_line_error(cli("sample", run, "--out", tmp_path / "x.png"), "version 99")
    assert_one_line_error(cli("train", "--resume", "--out", run), "version 99")


def test_unknown_dataset_lists_known_ones(cli, tmp_path: Path) -> None:
    line = assert_one_line_error(cli("train", "--data", "mnist6k", "--out", tmp_path / "run", "--quiet"), "mnist6k")
    for name in BUILTIN:
        assert name in line
    assert not (tmp_path / "run").exists()
    assert_one_line_error(cli("forward", "--data", "mnist6k", "--out", tmp_path / "f.png"), "mnist6k")


def test_unreadable_image_in_a_folder(cli, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "ok.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG but not really" * 3)
    assert_one_line_error(cli("train", "--data", folder, "--out", tmp_path / "run", "--quiet"), "corrupt.png")


def test_damaged_npz(cli, tmp_path: Path) -> None:
    np.savez(tmp_path / "pts.npz", x=np.zeros((100, 2), np.float32))
    data = (tmp_path / "pts.npz").read_bytes()
    (tmp_path / "pts.npz").write_bytes(data[: len(data) // 2])  # an interrupted download
    assert_one_line_error(cli("train", "--data", tmp_path / "pts.npz", "--out", tmp_path / "run", "--quiet"),
                          "pts.npz")


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "0"], "--steps"),
    (["--steps", "-1"], "--steps"),
    (["--steps", "many"], "--steps"),
    (["--n", "-3"], "--n"),
    (["--n", "0"], "--n"),
    (["--spacing", "sideways"], "--spacing"),
    (["--sampler", "euler-maruyama"], "sampler"),
    (["--steps", "5000", "--spacing", "trailing"], "5000"),  # more of a chain's steps than it has
    (["--trajectory", "traj.png"], "trajectory"),  # points cannot be drawn as a strip
    (["--eta", "-1"], "--eta"),  # was silently deterministic
    (["--eta", "inf"], "--eta"),  # was all-NaN samples
    (["--eta", "nan"], "--eta"),
    (["--classifier-scale", "2"], "classifier_scale scales classifier guidance"),  # was ignored without a classifier
    (["--label", "\u00b2"], "label"),  # a Unicode digit that int() refuses: was a ValueError traceback
    (["--seed", str(2**64)], "seed must be an integer in"),  # was torch's ValueError
])
def test_bad_sampling_flags(cli, moons_run: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(cli("sample", moons_run, "--out", tmp_path / "x.png", *args), fragment)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, fragment", [
    ([], "mnist-text is text-conditional: give a prompt"),
    (["--label", "\u00b2"], "label must be 'all' or a class in 0..9"),
    (["--prompt", "a 3", "--label", "3"], "a prompt or a label, not both"),
])
def test_text_model_flags(cli, tmp_path: Path, args: list[str], fragment: str) -> None:
    """The pipeline's refusals reach the command line as one line naming the argument (the CLI no longer keeps
    its own copies of them)."""
    assert_one_line_error(cli("sample", "mnist-text", "--out", tmp_path / "x.png", *args), fragment)
    assert not (tmp_path / "x.png").exists()


def test_labels_are_parsed_as_decimal_numbers() -> None:
    """--label K is an int when every character is a decimal digit (an Arabic-Indic 3 too); anything else ("²",
    which isdigit() accepts and int() refuses; "-1"; "all") goes to the pipeline as given, to use or refuse."""
    from diffusa.cli import build_parser, pipeline_args

    for text, label in (("7", 7), ("\u0663", 3), ("\u00b2", "\u00b2"), ("-1", "-1"), ("all", "all")):
        args = build_parser().parse_args(["sample", "run", "--out", "x.png", "--label", text])
        assert pipeline_args(args, 4)["label"] == label


@pytest.mark.parametrize("out", ["samples.jpg", "samples", "samples.npy"])
def test_bad_out_suffix(cli, moons_run: Path, tmp_path: Path, out: str) -> None:
    assert_one_line_error(cli("sample", moons_run, "--out", tmp_path / out), ".png", ".npz")


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "0"], "--steps"),
    (["--batch-size", "-2"], "--batch-size"),
    (["--set", "train.stepz=5"], "stepz"),
    (["--set", "nosuchsection.key=1"], "nosuchsection"),
    (["--set", "train.steps=many"], "train.steps"),
    (["--set", "no_equals_sign"], "key=value"),
    (["--set", "model.net.widthh=3"], "widthh"),
    (["--config", "absent.toml"], "absent.toml"),
])
def test_bad_train_flags(cli, tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(cli("train", "--data", "moons", "--out", tmp_path / "run", "--quiet", *args), fragment)
    assert not (tmp_path / "run").exists()


def test_train_into_an_existing_run_without_resume(cli, moons_run: Path) -> None:
    before = (moons_run / "model.safetensors").read_bytes()
    assert_one_line_error(cli("train", "--data", "moons", "--out", moons_run, "--quiet"), "--resume")
    assert (moons_run / "model.safetensors").read_bytes() == before


def test_train_out_is_a_file(cli, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a folder")
    assert_one_line_error(cli("train", "--data", "moons", "--out", tmp_path / "notes.txt", *TINY_TRAIN,
                              "--steps", "2"), "notes.txt")


def test_resume_without_checkpoint(cli, tmp_path: Path) -> None:
    assert_one_line_error(cli("train", "--resume", "--out", tmp_path / "absent"), "does not exist")


def test_forward_on_points(cli, tmp_path: Path) -> None:
    assert_one_line_error(cli("forward", "--data", "moons", "--out", tmp_path / "f.png"), "images")


# -- happy paths -------------------------------------------------------------------------------


def test_train_then_resume(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = cli("train", "--data", "moons", "--out", run, "--steps", "4", *TINY_TRAIN)
    assert res.code == 0, res.err
    assert res.err == ""  # --quiet: nothing on stderr
    assert json.loads((run / "train_state.json").read_text())["step"] == 4
    res = cli("train", "--resume", "--out", run, "--steps", "8", "--quiet")
    assert res.code == 0, res.err
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 8
    assert json.loads((run / "config.json").read_text())["config"]["model"]["net"]["hidden"] == 16
    for name in ("model.safetensors", "loss.png", "samples/final.png"):
        assert (run / name).is_file()


def test_sample_png(cli, moons_run: Path, digits_run: Path, tmp_path: Path) -> None:
    for run in (moons_run, digits_run):
        out = tmp_path / run.parent.name / "grid.png"
        res = cli("sample", run, "--n", "16", "--steps", "3", "--out", out)
        assert res.code == 0, res.err
        assert out.read_bytes()[:8] == PNG_MAGIC


def test_sample_npz_points(cli, moons_run: Path, tmp_path: Path) -> None:
    res = cli("sample", moons_run, "--n", "300", "--steps", "3", "--out", tmp_path / "s.npz")
    assert res.code == 0, res.err
    with np.load(tmp_path / "s.npz") as f:
        assert sorted(f.files) == ["diffusa", "samples"]  # the samples, and the mark of a file diffusa wrote
        assert str(f["diffusa"]).startswith("diffusa ")
        assert f["samples"].dtype == np.float32 and f["samples"].shape == (300, 2)
        assert np.isfinite(f["samples"]).all()


def test_sample_npz_images(cli, digits_run: Path, tmp_path: Path) -> None:
    res = cli("sample", digits_run, "--n", "5", "--steps", "3", "--sampler", "ancestral", "--out",
              tmp_path / "s.npz")
    assert res.code == 0, res.err
    with np.load(tmp_path / "s.npz") as f:
        samples, images = f["samples"], f["images"]
    assert samples.dtype == np.float32 and samples.shape == (5, 1, 8, 8)
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1)
    assert np.array_equal(images, unit_to_uint8(torch.from_numpy(samples)))


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_same_seed_same_samples(cli, digits_run: Path, tmp_path: Path, sampler: str) -> None:
    def draw(name: str, seed: int) -> np.ndarray:
        res = cli("sample", digits_run, "--n", "4", "--steps", "4", "--sampler", sampler, "--seed", seed,
                  "--out", tmp_path / name)
        assert res.code == 0, res.err
        with np.load(tmp_path / name) as f:
            return f["samples"]

    a, b, c = draw("a.npz", 7), draw("b.npz", 7), draw("c.npz", 8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_trajectory(cli, digits_run: Path, tmp_path: Path) -> None:
    res = cli("sample", digits_run, "--n", "3", "--steps", "4", "--out", tmp_path / "g.png",
              "--trajectory", tmp_path / "traj.png")
    assert res.code == 0, res.err
    assert (tmp_path / "traj.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "g.png").is_file()


def test_eval_points(cli, moons_run: Path, tmp_path: Path) -> None:
    res = cli("eval", moons_run, "--n", "300", "--steps", "5", "--out", tmp_path / "m.json")
    assert res.code == 0, res.err
    metrics = json.loads(res.out)
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    few = json.loads((moons_run / "config.json").read_text())["sampling"]["few_steps"]  # POINT_FEW_STEPS: <= 10 steps
    assert metrics["n"] == 300 and metrics["steps"] == 5
    assert (metrics["sampler"], metrics["spacing"]) == (few["sampler"], few["spacing"]) == ("unipc", "logsnr-unit")
    assert 0 < metrics["energy_distance_floor"] < metrics["energy_distance"] < 1.0
    assert metrics["ratio_to_floor"] == pytest.approx(metrics["energy_distance"] / metrics["energy_distance_floor"])


def test_eval_images(cli, digits_run: Path, digit_classifier_path: Path) -> None:
    res = cli("eval", digits_run, "--n", "200", "--steps", "3")
    assert res.code == 0, res.err
    metrics = json.loads(res.out)
    for key in ("fd", "fd_floor", "kid", "kid_floor", "confident_share", "confident_share_floor", "precision",
                "recall", "precision_floor", "recall_floor"):
        assert np.isfinite(metrics[key]), key
    assert 0 <= metrics["fd_floor"] < metrics["fd"]  # 20 training steps are far from real digits
    assert metrics["pr_k"] == 3 and metrics["pr_n"] == 200
    assert metrics["precision"] < metrics["precision_floor"] and metrics["recall"] < metrics["recall_floor"]


def test_forward(cli, tmp_path: Path) -> None:
    res = cli("forward", "--data", "digits", "--n", "2", "--columns", "4", "--out", tmp_path / "fwd.png")
    assert res.code == 0, res.err
    assert (tmp_path / "fwd.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(("args", "fragment"), [
    (["--sampler", "heun", "--eta", "0.5"], "has no option 'eta'"),
    (["--sampler", "ddim", "--variance", "beta"], "has no option 'variance'"),
    (["--sampler", "no_such"], "unknown sampler"),
])
def test_sampler_options_that_do_not_apply(cli, moons_run: Path, tmp_path: Path, args: list[str],
                                          fragment: str) -> None:
    res = cli("sample", moons_run, "--n", 4, "--steps", 3, "--out", tmp_path / "x.png", *args)
    assert res.code != 0 and fragment in res.err and "Traceback" not in res.err
    assert res.err.strip().count("\n") == 0


# -- continuous-time processes -----------------------------------------------------------------


def test_train_process_edm(cli, tmp_path: Path) -> None:
    run = tmp_path / "edm"
    res = cli("train", "--data", "moons", "--process", "edm", "--out", run, "--steps", "4", *TINY_TRAIN)
    assert res.code == 0, res.err
    meta = json.loads((run / "config.json").read_text())
    # "auto" resolved for EDM and saved, so a loaded run rebuilds the same Denoiser
    assert meta["config"]["model"]["prediction"] == "edm"
    assert (meta["config"]["loss"]["weighting"], meta["config"]["loss"]["time_sampler"]) == ("edm", "lognormal")
    assert meta["process"] == {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}
    res = cli("sample", run, "--n", "8", "--steps", "3", "--out", tmp_path / "x.npz")
    assert res.code == 0, res.err
    assert np.isfinite(np.load(tmp_path / "x.npz")["samples"]).all()
    res = cli("train", "--resume", "--out", run, "--steps", "6", "--quiet", "--process", "flow")
    assert_one_line_error(res, "--process flow", "'edm'")


def test_train_process_passes_settings_through(cli, tmp_path: Path) -> None:
    run = tmp_path / "ve"
    res = cli("train", "--data", "moons", "--process", "ve", "--set", "process.sigma_max=20", "--out", run,
              "--steps", "2", *TINY_TRAIN)
    assert res.code == 0, res.err
    assert json.loads((run / "config.json").read_text())["process"] == {"name": "ve", "sigma_min": 0.01,
                                                                        "sigma_max": 20.0}


def test_train_process_help_and_errors(cli, tmp_path: Path) -> None:
    assert "{ddpm,vp,subvp,ve,edm,flow}" in cli("train", "--help").out
    res = cli("train", "--data", "moons", "--process", "vee", "--out", tmp_path / "run", "--quiet")
    assert res.code == 2
    assert_one_line_error(res, "--process", "'vee'", "ddpm", "flow")
    res = cli("train", "--data", "moons", "--set", 'process.name="vee"', "--out", tmp_path / "run", "--quiet")
    assert res.code == 2
    assert_one_line_error(res, "unknown process 'vee'; known: ddpm, vp, subvp, ve, edm, flow")
    res = cli("train", "--data", "moons", "--process", "flow", "--set", 'model.prediction="velocty"',
              "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(res, "unknown prediction 'velocty'; known: eps, x0, v, velocity, edm")
    assert not (tmp_path / "run").exists()


# -- eval --bpd ------------------------------------------------------------------------------------------
def test_eval_bpd_bound_estimate_and_plot(cli, digits_run: Path, tmp_path: Path) -> None:
    plot = tmp_path / "terms.png"
    res = cli("eval", digits_run, "--bpd", "--terms", "8", "--n", "24", "--plot", plot, "--out", tmp_path / "b.json")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert json.loads((tmp_path / "b.json").read_text()) == out
    assert out["method"] == "variational bound" and out["terms"] == 8 and out["n"] == 24
    # 20 training steps: far worse than 8 bits/dim of raw pixels, yet finite, with a positive standard error
    assert 8 < out["bpd"] < 1e4 and 0 < out["se"] < out["bpd"]
    assert 0 <= out["prior_bpd"] < 0.01  # q(x_T | x0) is N(0, I) to within alphabar_T for the cosine chain
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_eval_bpd_same_seed_same_number(cli, digits_run: Path, tmp_path: Path) -> None:
    args = ("eval", digits_run, "--bpd", "--terms", "4", "--n", "16", "--plot", tmp_path / "p.png")
    a, b = cli(*args), cli(*args)
    assert a.code == b.code == 0
    assert json.loads(a.out)["bpd"] == json.loads(b.out)["bpd"]


@pytest.mark.parametrize("terms", ["0", "-3", "some"])
def test_eval_bpd_bad_terms(cli, digits_run: Path, terms: str) -> None:
    res = cli("eval", digits_run, "--bpd", "--terms", terms)
    assert res.code == 2 and "--terms" in res.err and "Traceback" not in res.err


def test_eval_bpd_continuous_uses_the_ode(cli, tmp_path: Path) -> None:
    run = tmp_path / "flow"
    res = cli("train", "--data", "digits", "--process", "flow", "--out", run, "--steps", "5", "--batch-size", "16",
              "--quiet", "--set", "model.net.channels=8", "--set", "train.sample_every=0")
    assert res.code == 0, res.err
    res = cli("eval", run, "--bpd", "--n", "3", "--rtol", "1e-3")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["method"].startswith("probability-flow ODE") and out["nfe"] > 0
    assert np.isfinite(out["bpd"]) and out["bpd"] > 0
    assert_one_line_error(cli("eval", run, "--bpd", "--n", "3", "--terms", "4"), "terms", "probability-flow ODE")


@pytest.mark.parametrize("spacing", ["ddim", "karras", "logsnr"])
def test_sample_with_spacing(cli, digits_run: Path, tmp_path: Path, spacing: str) -> None:
    args = ("sample", digits_run, "--n", "4", "--steps", "7", "--sampler", "ancestral")
    res = cli(*args, "--spacing", spacing, "--out", tmp_path / "s.npz")
    assert res.code == 0, res.err
    assert cli(*args, "--out", tmp_path / "default.npz").code == 0
    x, default = (np.load(tmp_path / f)["samples"] for f in ("s.npz", "default.npz"))
    assert x.shape == (4, 1, 8, 8) and np.isfinite(x).all() and not np.allclose(x, default)


@pytest.mark.parametrize("args, fragment", [
    (["--n", "1"], "at least 2"),  # was a LinAlgError traceback from a 1-sample covariance
    (["--bpd", "--label", "3"], "--label would be ignored"),
    (["--bpd", "--spacing", "karras", "--eta", "1"], "--spacing, --eta would be ignored"),
    (["--bpd", "--sampler", "heun", "--steps", "9"], "--sampler, --steps would be ignored"),
    (["--terms", "4", "--plot", "p.png"], "--terms, --plot set how --bpd"),  # were ignored without --bpd
    (["--bpd", "--rtol", "1e-3"], "variational bound"),  # a chain's bound has no ODE tolerance
])
def test_eval_refuses_what_it_cannot_measure(cli, digits_run: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(cli("eval", digits_run, *args), fragment)


def test_eval_records_the_grid_and_options(cli, digits_run: Path, tmp_path: Path) -> None:
    res = cli("eval", digits_run, "--n", "4", "--steps", "3", "--sampler", "ddim", "--spacing", "karras", "--eta",
              "0.5", "--out", tmp_path / "m.json")
    assert res.code == 0, res.err
    out = json.loads((tmp_path / "m.json").read_text())
    assert (out["sampler"], out["steps"], out["spacing"], out["eta"]) == ("ddim", 3, "karras", 0.5)
    assert cli("eval", digits_run, "--n", "2", "--steps", "2", "--out", tmp_path / "d.json").code == 0
    assert json.loads((tmp_path / "d.json").read_text())["spacing"] == "default"


def test_bpd_of_a_shipped_model_writes_beside_the_user(cli, tmp_path: Path, monkeypatch) -> None:
    """The bound's plot goes to ./NAME-bpd_terms.png, not into a new ./NAME folder that would then shadow the
    shipped model (nor into the installed package); one image gives se null (JSON has no NaN)."""
    monkeypatch.chdir(tmp_path)
    res = cli("eval", "mnist-pixel", "--bpd", "--n", "1", "--terms", "2")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["se"] is None and np.isfinite(out["bpd"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist-pixel-bpd_terms.png"]
    (tmp_path / "mnist-pixel").mkdir()  # an unrelated folder of that name does not hide the shipped model
    assert cli("sample", "mnist-pixel", "--n", "1", "--steps", "1", "--out", tmp_path / "x.png").code == 0


def test_outputs_never_overwrite_a_runs_own_files(cli, digits_run, tmp_path) -> None:
    """eval RUN --out RUN/config.json used to replace the run's config with metrics (issue 16): refused in one
    line before any work, for every output flag, and the run is untouched."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for args in (("eval", run, "--n", 4, "--steps", 2, "--out", run / "config.json"),
                 ("eval", run, "--bpd", "--n", 2, "--plot", run / "log.jsonl"),
                 ("sample", run, "--n", 2, "--steps", 2, "--out", run / "model.safetensors"),
                 ("forward", "--data", "digits", "--out", run / "train_state.json")):
        r = cli(*args)
        assert r.code == 2 and "would overwrite a file of the trained folder" in r.err and "Traceback" not in r.err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("args, match", [
    (("generate", "--model", "", "--out", "{tmp}/g.png"), "--model is empty"),
    (("sample", "", "--out", "{tmp}/s.png"), "no run given"),
    (("sample", "{run}/config.json", "--out", "{tmp}/s.png"), "is a file, not a run folder"),
    (("sample", "{run}", "--out", "{tmp}"), "is a folder"),
    (("sample", "{run}", "--n", 2, "--out", "{tmp}/s.png", "--trajectory", "{tmp}/t.jpg"), "--trajectory writes a PNG"),
    (("forward", "--data", "digits", "--out", "{tmp}/f.txt"), "--out writes a PNG"),
    (("eval", "{run}", "--bpd", "--n", 2, "--plot", "{tmp}/p.pdf"), "--plot writes a PNG"),
    (("generate", "\udcff\udcfe", "--out", "{tmp}/g.png"), "not valid text"),
    (("train", "--data", "digits", "--out", "{tmp}/r", "--config", "{tmp}/latin1.toml"), "not UTF-8"),
])
def test_more_bad_input_is_one_line(cli, digits_run, tmp_path, args, match) -> None:
    """Inputs from issue 16's list: each refused in one line before any work, no traceback."""
    (tmp_path / "latin1.toml").write_bytes("[train]\n# caf\xe9\n".encode("latin-1"))
    r = cli(*(a.format(tmp=tmp_path, run=digits_run) if isinstance(a, str) else a for a in args))
    assert r.code == 2 and match in r.err and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err


def test_python_m_diffusa_is_the_command_line() -> None:
    """`python -m diffusa` runs the same command line as the `diffusa` script (src/diffusa/__main__.py)."""
    ok = subprocess.run([sys.executable, "-m", "diffusa", "sample", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "recommended sampler" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "diffusa", "sample", "/no/such/run", "--out", "x.npz"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "/no/such/run" in bad.stderr
