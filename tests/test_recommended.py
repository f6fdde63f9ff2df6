"""A model's recommended sampler (config.json's "sampling"): the one rule that maps a sampler, steps or batch size
left out to a default (`pipelines.sampling.resolve_sampling`), the same in Python, on the command line and in the
server; a bad recommendation refused in one line naming the file and the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import diffusa
from diffusa.errors import DiffusaError
from diffusa.pipelines.sampling import (
    DEFAULT_BATCH,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    model_defaults,
    resolve_sampling,
)
from diffusa.shipped import resolve_model

REC = {"sampler": "dpmpp_2m_sde", "steps": 4, "why": "FD 35.5 vs 57.3 for dpmpp_2m at 20 steps (issue 17)"}
# a recommendation with a few-step sampler (point runs: UniPC on logsnr-unit at <= 10 steps, the SDE solver at 20)
FEW_REC = {**REC, "steps": 6, "eta": 3.0, "few_steps": {"max_steps": 3, "sampler": "ddim", "spacing": "logsnr",
                                                        "eta": 0.5}}


def with_sampling(src: Path, dest: Path, entry: Any) -> Path:
    """A copy of a run folder whose config.json carries `entry` as its "sampling"."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest)
    meta = json.loads((dest / "config.json").read_text())
    meta["sampling"] = entry
    (dest / "config.json").write_text(json.dumps(meta))
    return dest


@pytest.fixture(scope="module")
def rec_run(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny digits run (a discrete chain) recommending dpmpp_2m_sde at 4 steps (read-only)."""
    return with_sampling(digits_run, tmp_path_factory.mktemp("rec") / "run", REC)


# -- the rule -------------------------------------------------------------------------------------------------------
def test_resolve_sampling_rule(rec_run: Path, digits_run: Path) -> None:
    assert resolve_sampling(None) == (DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_BATCH) == ("dpmpp_2m", 20, 250)
    assert resolve_sampling(None, "ddim", 7, 3) == ("ddim", 7, 3)  # given: kept
    assert resolve_sampling(None, task_sampler="ddpm") == ("ddpm", 20, 250)
    pipe, plain = diffusa.load(rec_run), diffusa.load(digits_run)
    assert pipe.recommended == ("dpmpp_2m_sde", 4) == pipe.run.recommended
    assert (pipe.default_sampler, pipe.default_steps) == ("dpmpp_2m_sde", 4)
    assert plain.recommended is None and (plain.default_sampler, plain.default_steps) == ("dpmpp_2m", 20)
    assert resolve_sampling(pipe, None, None, None) == ("dpmpp_2m_sde", 4, 250)
    assert resolve_sampling(pipe.run, "ddim", None) == ("ddim", 4, 250)  # steps: the recommended, any sampler
    assert resolve_sampling(pipe, None, 9) == ("dpmpp_2m_sde", 9, 250)
    assert resolve_sampling(pipe, None, None, task_sampler="ddpm") == ("ddpm", 4, 250)  # inpainting's own sampler
    meta = json.loads((rec_run / "config.json").read_text())  # the server resolves from config.json alone
    assert model_defaults(meta) == model_defaults(pipe) == ("dpmpp_2m_sde", 4)
    student = {"consistency": {"levels": 18}}  # a consistency model (diffusa distill): its own sampler, one step
    assert resolve_sampling(student) == ("consistency", 1, 250)
    assert resolve_sampling({**student, "sampling": {"sampler": "consistency", "steps": 2}}) == ("consistency", 2, 250)


# -- Python ----------------------------------------------------------------------------------------------------------
def test_a_call_without_sampler_uses_the_recommendation(rec_run: Path, digits_run: Path) -> None:
    pipe = diffusa.load(rec_run)
    a = pipe(n=2, seed=0)
    b = pipe(n=2, seed=0, sampler="dpmpp_2m_sde", steps=4)
    assert torch.equal(a.samples, b.samples) and a.settings == b.settings
    assert (a.settings["sampler"], a.settings["steps"], a.settings["nfe"]) == ("dpmpp_2m_sde", 4, 4)
    c = pipe(n=2, seed=0, sampler=DEFAULT_SAMPLER, steps=DEFAULT_STEPS)  # the global default: other samples
    assert (a.samples - c.samples).abs().max() > 0.1
    plain = diffusa.load(digits_run)(n=2, seed=0)  # the same weights without a recommendation: global defaults
    assert (plain.settings["sampler"], plain.settings["steps"]) == ("dpmpp_2m", 20)
    assert torch.equal(plain.samples, c.samples)
    # a sampler given without steps takes the recommended steps; steps given without a sampler, the sampler
    assert pipe(n=2, seed=0, sampler="ddim").settings["steps"] == 4
    assert pipe(n=2, seed=0, steps=2).settings["sampler"] == "dpmpp_2m_sde"


def test_edits_use_the_recommendation(rec_run: Path) -> None:
    pipe = diffusa.load(rec_run)
    image = pipe(n=2, seed=5, sampler="ddim", steps=3).samples
    a = pipe.img2img(image, 0.7, seed=1)
    b = pipe.img2img(image, 0.7, seed=1, sampler="dpmpp_2m_sde", steps=4)
    assert torch.equal(a.samples, b.samples) and (a.settings["sampler"], a.settings["steps"]) == ("dpmpp_2m_sde", 4)
    a = pipe.inpaint(image, "top", seed=1, jump_n_sample=1)
    b = pipe.inpaint(image, "top", seed=1, jump_n_sample=1, sampler="ddpm", steps=4)
    assert torch.equal(a.samples, b.samples)
    assert (a.settings["sampler"], a.settings["steps"]) == ("ddpm", 4)  # RePaint's ancestral, the model's steps


def test_upscale_and_cascade_use_each_stage_recommendation(sr_run: Path, tmp_path: Path) -> None:
    from diffusa.config import load_config
    from diffusa.pipelines import cascade
    from diffusa.train import diffusion_engine

    up = diffusa.load(with_sampling(sr_run, tmp_path / "sr", {"sampler": "ddim", "steps": 3}))
    low = torch.zeros(1, 1, 4, 4)
    a = up.upscale(low, seed=2)
    b = up.upscale(low, seed=2, sampler="ddim", steps=3)
    assert torch.equal(a.samples, b.samples) and (a.settings["sampler"], a.settings["steps"]) == ("ddim", 3)
    cfg = load_config(overrides=['data.name="digits"', "data.image_size=4", "train.steps=2", "train.batch_size=16",
                                 "train.sample_every=0", "train.checkpoint_every=0", "model.net.channels=8"])
    run = diffusion_engine(cfg, tmp_path / "base", progress=False).fit()  # a 4x4 base for the 2x upscaler
    base = diffusa.load(with_sampling(run, tmp_path / "base-rec", REC))
    res = cascade(base, up, n=2, seed=0)
    assert (res.settings["base"]["sampler"], res.settings["base"]["steps"]) == ("dpmpp_2m_sde", 4)
    assert (res.settings["sampler"], res.settings["steps"]) == ("ddim", 3)  # the upscaler's own
    res = cascade(base, up, n=2, seed=0, sampler="heun")  # given: both stages
    assert res.settings["base"]["sampler"] == res.settings["sampler"] == "heun"
    assert (res.settings["base"]["steps"], res.settings["steps"]) == (4, 3)


# -- refusals --------------------------------------------------------------------------------------------------------
BAD = [
    ({"sampler": "warp_drive", "steps": 4}, "sampling.sampler must be a sampler's name"),
    ({"sampler": 3, "steps": 4}, "sampling.sampler must be"),
    ({"steps": 4}, "sampling.sampler must be"),
    ({"sampler": "ddim", "steps": 0}, r"sampling.steps must be an integer in 1\.\.100000, got 0"),
    ({"sampler": "ddim", "steps": "4"}, "sampling.steps must be"),
    ({"sampler": "ddim", "steps": True}, "sampling.steps must be"),
    ({"sampler": "ddim", "steps": 10**12}, "sampling.steps must be"),
    ({"sampler": "ddim"}, "sampling.steps must be"),
    ({"sampler": "ddim", "steps": 4, "why": 5}, "sampling.why must be text"),
    ({"sampler": "ddim", "steps": 4, "nfe": 4}, "sampling.nfe is not a key of it"),
    ("ddim", "sampling must be a table"),
    ({"sampler": "ddim", "steps": 4, "guidance_scale": float("nan")}, "sampling.guidance_scale must be a finite "
                                                                       "number > 0, got nan"),
    ({"sampler": "ddim", "steps": 4, "guidance_scale": 0.0}, "sampling.guidance_scale must be a finite number > 0"),
    ({"sampler": "ddim", "steps": 4, "guidance_scale": 3}, "sampling.guidance_scale does not suit this model: the "
                                                           "model has no conditional and unconditional branches"),
    ({"sampler": "ddim", "steps": 5000}, r"sampling \(sampler ddim, steps 5000\) does not suit this model: steps "
                                         "5000 exceeds the model's 1000 training steps"),
    ({"sampler": "ddim", "steps": 8, "few_steps": "unipc"}, "sampling.few_steps must be a table"),
    ({"sampler": "ddim", "steps": 8, "few_steps": {"max_steps": 4, "sampler": "unipc", "nfe": 4}},
     "sampling.few_steps.nfe is not a key of it"),
    ({"sampler": "ddim", "steps": 8, "few_steps": {"max_steps": 8, "sampler": "unipc"}},
     r"sampling.few_steps.max_steps must be an integer in 1\.\.7 \(below sampling.steps\), got 8"),
    ({"sampler": "ddim", "steps": 8, "few_steps": {"sampler": "unipc"}}, "sampling.few_steps.max_steps must be"),
    ({"sampler": "ddim", "steps": 1, "few_steps": {"max_steps": 1, "sampler": "unipc"}},
     r"sampling.few_steps is for draws of fewer steps than sampling.steps, which is 1 \(raise sampling.steps to use "
     r"it\); correct or remove the entry"),
    ({"sampler": "ddim", "steps": 8, "few_steps": {"max_steps": 4, "sampler": "warp"}},
     "sampling.few_steps.sampler must be a sampler's name"),
    ({"sampler": "ddim", "steps": 8, "few_steps": {"max_steps": 4, "sampler": "unipc", "eta": 1.0}},
     "sampling.few_steps.eta is an option of a stochastic sampler"),
    ({"sampler": "ddim", "steps": 8, "few_steps": {"max_steps": 4, "sampler": "unipc", "spacing": "zigzag"}},
     "sampling.few_steps.spacing must be a grid's name"),
]


@pytest.mark.parametrize("entry, fragment", BAD)
def test_a_bad_recommendation_is_one_line(digits_run: Path, tmp_path: Path, entry: Any, fragment: str) -> None:
    run = with_sampling(digits_run, tmp_path / "run", entry)
    with pytest.raises(DiffusaError, match=fragment) as info:
        diffusa.load(run)
    message = str(info.value)
    assert message.startswith(f"{run / 'config.json'}: sampling") and "\n" not in message


def test_cli_refuses_a_bad_recommendation(cli, digits_run: Path, tmp_path: Path) -> None:
    run = with_sampling(digits_run, tmp_path / "run", {"sampler": "warp_drive", "steps": 4})
    res = cli("sample", run, "--n", "2", "--out", tmp_path / "x.png")
    assert res.code == 2 and not (tmp_path / "x.png").exists()  # a user error: one line, no traceback
    assert res.err.count("\n") == 1 and "config.json: sampling.sampler must be" in res.err, res.err


# -- the command line ------------------------------------------------------------------------------------------------
def test_cli_uses_the_recommendation(cli, rec_run: Path, moons_run: Path, tmp_path: Path) -> None:
    res = cli("sample", rec_run, "--n", "2", "--out", tmp_path / "s.npz", "--trajectory", tmp_path / "t.png")
    assert res.code == 0, res.err
    assert "(dpmpp_2m_sde, 4 steps)" in res.out  # the settings used
    with np.load(tmp_path / "s.npz") as z:
        want = diffusa.load(rec_run)(n=2, seed=0, sampler="dpmpp_2m_sde", steps=4).samples
        assert torch.equal(torch.from_numpy(z["samples"]), want)
    res = cli("generate", "--model", rec_run, "--n", "2", "--out", tmp_path / "g.png")
    assert res.code == 0, res.err
    assert "dpmpp_2m_sde 4 steps" in res.out
    help_text = " ".join(cli("sample", "--help").out.split())  # argparse wraps the lines where it likes
    assert "recommended sampler" in help_text and "else dpmpp_2m" in help_text and "else 20" in help_text
    moons = with_sampling(moons_run, tmp_path / "moons", {"sampler": "ddim", "steps": 5, "why": "test"})
    res = cli("eval", moons, "--n", "300")
    assert res.code == 0, res.err
    metrics = json.loads(res.out)
    assert (metrics["sampler"], metrics["steps"]) == ("ddim", 5)  # eval's JSON reports the settings used


# -- the server --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(rec_run: Path, digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("fastapi")
    pytest.importorskip("gradio")
    from fastapi.testclient import TestClient

    from diffusa.serve import create_app

    base = tmp_path_factory.mktemp("serve-rec")
    shutil.copytree(rec_run, base / "runs" / "rec")
    with_sampling(digits_run, base / "runs" / "bad", {"sampler": "warp_drive", "steps": 4})
    with_sampling(digits_run, base / "runs" / "few", FEW_REC)
    app = create_app(runs=base / "runs", history=base / "history", max_queue=1)
    with TestClient(app, base_url="http://127.0.0.1:7860", raise_server_exceptions=False) as c:
        yield c


def test_api_uses_the_recommendation(server: Any, rec_run: Path, tmp_path: Path) -> None:
    r = server.post("/api/generate", json={"model": "rec", "n": 2, "seed": 0, "format": "npz"})
    assert r.status_code == 200, r.text
    settings = json.loads(r.headers["x-diffusa-settings"])
    assert (settings["sampler"], settings["steps"]) == ("dpmpp_2m_sde", 4)
    (tmp_path / "a.npz").write_bytes(r.content)
    res = diffusa.load(rec_run)(n=2, seed=0, sampler="dpmpp_2m_sde", steps=4)
    with np.load(tmp_path / "a.npz") as z:
        assert torch.equal(torch.from_numpy(z["samples"]), res.samples)
    assert settings == {**res.settings, "model": "rec"}
    record = server.get(f"/api/history/{r.headers['x-diffusa-id']}").json()
    assert (record["request"]["sampler"], record["request"]["steps"]) == ("dpmpp_2m_sde", 4)  # what ran
    r = server.post("/api/generate", json={"model": "rec", "n": 2, "seed": 0, "sampler": "ddim"})
    assert r.status_code == 200 and json.loads(r.headers["x-diffusa-settings"])["steps"] == 4
    r = server.post("/api/inpaint", json={"model": "rec", "digit": 3, "mask": "top", "jump_n_sample": 1})
    assert r.status_code == 200, r.text
    settings = json.loads(r.headers["x-diffusa-settings"])
    assert (settings["sampler"], settings["steps"]) == ("ddpm", 4)


def test_api_and_page_use_a_few_step_recommendation(server: Any) -> None:
    """The server resolves a request's sampler at its steps, as the pipeline does: a request for few steps that
    names no sampler gets the few-step one (with its grid and eta); the page's sampler box follows the steps box
    while it holds one of the model's own choices, and keeps a sampler the user picked."""
    from diffusa.serve.ui import steps_sampler

    for steps, want in ((3, ("ddim", "logsnr", 0.5)), (5, ("dpmpp_2m_sde", "default", 3.0))):
        r = server.post("/api/generate", json={"model": "few", "n": 2, "seed": 0, "steps": steps, "format": "npz"})
        assert r.status_code == 200, r.text
        settings = json.loads(r.headers["x-diffusa-settings"])
        assert (settings["sampler"], settings["spacing"], settings["eta"]) == want, steps
        assert server.get(f"/api/history/{r.headers['x-diffusa-id']}").json()["request"]["sampler"] == want[0]
    service = server.app.state.service
    assert steps_sampler(service, "few", "generate", 3, "dpmpp_2m_sde") == "ddim"
    assert steps_sampler(service, "few", "generate", 8, "ddim") == "dpmpp_2m_sde"
    assert steps_sampler(service, "few", "generate", 3, "euler") == "euler"  # the user's pick stays
    assert steps_sampler(service, "few", "generate", None, "dpmpp_2m_sde") == "dpmpp_2m_sde"  # a blank box
    for odd in (float("nan"), float("inf"), 2.5, 0, -3, True):  # the request, not the box, says what is wrong
        assert steps_sampler(service, "few", "generate", odd, "dpmpp_2m_sde") == "dpmpp_2m_sde"


def test_api_models_and_a_bad_recommendation(server: Any) -> None:
    listed = {m["name"]: m for m in server.get("/api/models").json()["models"]}
    assert listed["rec"]["recommended"] == REC
    assert listed["rec"]["defaults"] == {"sampler": "dpmpp_2m_sde", "steps": 4}
    shipped = json.loads((resolve_model("mnist-pixel") / "config.json").read_text())  # its own, whatever it says
    assert listed["mnist-pixel"]["defaults"] == dict(zip(("sampler", "steps"), model_defaults(shipped), strict=True))
    assert "error" in listed["bad"]
    r = server.post("/api/generate", json={"model": "bad", "n": 2})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail.startswith("<runs>/bad/config.json: sampling.sampler must be") and "\n" not in detail


def test_page_shows_and_uses_the_recommendation(server: Any) -> None:
    import threading

    from diffusa.serve.ui import build_ui, generate_updates, model_sampling, page_request

    service = server.app.state.service
    assert model_sampling(service, "rec") == ("dpmpp_2m_sde", 4)
    assert model_sampling(service, "rec", "inpaint") == ("ddpm", 4)
    assert model_sampling(service, "bad") == model_sampling(service, "") == ("dpmpp_2m", 20)  # the global ones
    req = page_request("rec", "", "", "", None, None, None, 0, 2)  # the sampler and steps boxes left blank
    assert req.sampler is None and req.steps is None
    *_, (_, gen, status) = generate_updates(service, req, threading.Event())
    assert (gen.samples.settings["sampler"], gen.samples.settings["steps"]) == ("dpmpp_2m_sde", 4)
    assert "dpmpp_2m_sde 4 steps" in status and gen.entry.request["sampler"] == "dpmpp_2m_sde"
    # picking a model on a tab sets its sampler and steps controls to the model's (one handler per tab)
    page = build_ui(service)
    handlers = [d for d in page.fns.values() if [getattr(b, "label", None) for b in d.outputs] == ["sampler", "steps"]]
    assert len(handlers) == 4 and all([b.label for b in d.inputs] == ["model"] for d in handlers)
    assert sorted(d.fn("rec") for d in handlers) == [("ddpm", 4), *[("dpmpp_2m_sde", 4)] * 3]


# -- point runs: a measured recommendation per process -----------------------------------------------------------------
def test_point_runs_record_their_process_recommendation(moons_run: Path) -> None:
    """A point run's config.json carries the sampler measured best for its process (diffusa.config.POINT_SAMPLING),
    and a draw without a sampler uses it."""
    from diffusa.config import POINT_SAMPLING

    meta = json.loads((moons_run / "config.json").read_text())
    sampler, steps, spacing = POINT_SAMPLING[meta["config"]["process"]["name"]]
    entry = meta["sampling"]
    assert (entry["sampler"], entry["steps"], entry.get("spacing")) == (sampler, steps, spacing)
    pipe = diffusa.load(moons_run)
    assert torch.equal(pipe(n=8, seed=3).samples,
                       pipe(n=8, seed=3, sampler=sampler, steps=steps, spacing=spacing).samples)
    from diffusa.config import POINT_FEW_STEPS

    few_sampler, top, few_spacing = POINT_FEW_STEPS[meta["config"]["process"]["name"]]
    assert entry["few_steps"] == {"max_steps": top, "sampler": few_sampler, "spacing": few_spacing}
    ten = pipe(n=8, seed=3, steps=top)
    assert (ten.settings["sampler"], ten.settings["spacing"]) == (few_sampler, few_spacing)
    assert torch.equal(ten.samples, pipe(n=8, seed=3, sampler=few_sampler, steps=top, spacing=few_spacing).samples)


def test_a_recommended_grid_goes_with_its_sampler(rec_run: Path, tmp_path: Path) -> None:
    """A recommendation may carry a grid (VP's point runs: DPM-Solver++(2M) SDE on the log-SNR grid): a draw that
    gives no spacing walks it with the recommended sampler, and walks another sampler's own default grid; a spacing
    given wins; settings record the grid walked; a bad grid is refused in one line naming the key."""
    from diffusa.pipelines.sampling import resolve_recommended

    run = with_sampling(rec_run, tmp_path / "grid", {**REC, "spacing": "logsnr"})
    pipe = diffusa.load(run)
    assert resolve_recommended(pipe, "dpmpp_2m_sde", None, None) == ("logsnr", None)
    assert resolve_recommended(pipe, "ddim", None, None) == (None, None)  # another sampler: its own default grid
    assert resolve_recommended(pipe, "dpmpp_2m_sde", "karras", None) == ("karras", None)  # given: kept
    assert resolve_recommended(diffusa.load(rec_run), "dpmpp_2m_sde", None, None) == (None, None)  # none recommended
    a = pipe(n=2, seed=0)
    b = pipe(n=2, seed=0, sampler="dpmpp_2m_sde", steps=4, spacing="logsnr")
    c = pipe(n=2, seed=0, sampler="dpmpp_2m_sde", steps=4, spacing="trailing")  # the chain's own default grid
    assert torch.equal(a.samples, b.samples) and a.settings["spacing"] == "logsnr"
    assert (a.samples - c.samples).abs().max() > 1e-3
    assert pipe(n=2, seed=0, sampler="ddim").settings["spacing"] == "default"
    bad = with_sampling(rec_run, tmp_path / "bad", {**REC, "spacing": "zigzag"})
    with pytest.raises(DiffusaError, match=r"sampling\.spacing must be a grid's name"):
        diffusa.load(bad)


def test_a_few_step_recommendation_takes_over_at_few_steps(rec_run: Path, tmp_path: Path) -> None:
    """A recommendation may name another sampler for draws of few steps ("few_steps": point runs draw with UniPC on
    the logsnr-unit grid at 10 steps or fewer, the SDE solver at more; docs/benchmarks.md): a draw that names no
    sampler uses it at steps <= max_steps, with its own grid and eta; at more steps, or with a sampler given, the
    main recommendation's rule holds."""
    from diffusa.pipelines.sampling import resolve_recommended

    run = with_sampling(rec_run, tmp_path / "few", FEW_REC)
    pipe = diffusa.load(run)
    assert resolve_sampling(pipe) == ("dpmpp_2m_sde", 6, 250)  # the recommended steps: the main sampler
    assert resolve_sampling(pipe, None, 3) == ("ddim", 3, 250)  # at max_steps and below: the few-step sampler
    assert resolve_sampling(pipe, None, 1) == ("ddim", 1, 250)
    assert resolve_sampling(pipe, None, 4) == ("dpmpp_2m_sde", 4, 250)
    assert resolve_sampling(pipe, "euler", 3) == ("euler", 3, 250)  # given: kept
    assert resolve_sampling(pipe, None, 3, task_sampler="ddpm") == ("ddpm", 3, 250)  # a task's own sampler wins
    assert resolve_recommended(pipe, "ddim", None, None, 3) == ("logsnr", 0.5)
    assert resolve_recommended(pipe, "ddim", None, None, 4) == (None, None)  # past max_steps: ddim's own
    assert resolve_recommended(pipe, "dpmpp_2m_sde", None, None, 3) == (None, 3.0)  # the main sampler, asked
    assert resolve_recommended(pipe, "ddim", "karras", 0.0, 3) == ("karras", 0.0)  # given: kept
    a = pipe(n=2, seed=0, steps=3)
    b = pipe(n=2, seed=0, sampler="ddim", steps=3, spacing="logsnr", eta=0.5)
    assert torch.equal(a.samples, b.samples)
    assert (a.settings["sampler"], a.settings["spacing"], a.settings["eta"]) == ("ddim", "logsnr", 0.5)
    c = pipe(n=2, seed=0, steps=5)
    assert torch.equal(c.samples, pipe(n=2, seed=0, sampler="dpmpp_2m_sde", steps=5, eta=3.0).samples)
    edited = pipe.img2img(torch.zeros(2, *pipe.run.data_shape), strength=0.5, steps=3, seed=0)
    assert edited.settings["sampler"] == "ddim"  # edits resolve through the same rule


def test_a_recommended_eta_goes_with_its_sampler(rec_run: Path, tmp_path: Path) -> None:
    """A recommendation may carry the stochasticity eta (the shipped mnist-pixel: DPM-Solver++(2M) SDE at eta 3,
    docs/demo.md): a draw that gives no eta uses it with the recommended sampler, not with another; an eta given
    wins; settings record the eta used; an eta on a deterministic sampler, or a negative one, is refused naming the
    key."""
    run = with_sampling(rec_run, tmp_path / "eta", {**REC, "eta": 3.0})
    pipe = diffusa.load(run)
    a, b = pipe(n=2, seed=0), pipe(n=2, seed=0, sampler="dpmpp_2m_sde", steps=4, eta=3.0)
    c = pipe(n=2, seed=0, sampler="dpmpp_2m_sde", steps=4, eta=1.0)
    assert torch.equal(a.samples, b.samples) and a.settings["eta"] == 3.0
    assert (a.samples - c.samples).abs().max() > 1e-3
    assert pipe(n=2, seed=0, sampler="ddim").settings.get("eta") is None  # another sampler: its own default
    assert pipe(n=2, seed=0, eta=0.5).settings["eta"] == 0.5  # given: kept
    refused = (({**REC, "eta": -1}, r"sampling\.eta must be a finite number >= 0"),
               ({**REC, "eta": "3"}, r"sampling\.eta must be a finite number >= 0"),
               ({**REC, "sampler": "dpmpp_2m", "eta": 1.0}, r"sampling\.eta is an option of a stochastic"))
    for i, (entry, message) in enumerate(refused):
        with pytest.raises(DiffusaError, match=message):
            diffusa.load(with_sampling(rec_run, tmp_path / f"bad{i}", entry))


def test_point_recommendations_are_what_the_toy_benchmark_measured() -> None:
    """POINT_SAMPLING is `benchmarks/toys.py`'s rule applied to its recorded numbers (docs/results/raw/toys.json):
    the constant cannot drift from the measurement."""
    import sys

    from diffusa.config import POINT_FEW_STEPS, POINT_SAMPLING

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        from toys import NFE, STEPS, key, recommend
    finally:
        sys.path.remove(str(root / "benchmarks"))
    rows = json.loads((root / "docs" / "results" / "raw" / "toys.json").read_text())
    for process, (sampler, steps, spacing) in POINT_SAMPLING.items():
        mine = [r for r in rows if r["process"] == process]
        assert len(mine) == 8 and steps == STEPS
        assert recommend(mine)[0] == key(sampler, spacing), process
        few_sampler, top, few_spacing = POINT_FEW_STEPS[process]
        assert top == NFE and recommend(mine, "ed")[0] == key(few_sampler, few_spacing), process


def test_a_recommended_grid_that_does_not_suit_the_model_is_refused_when_read(moons_run: Path, tmp_path: Path) -> None:
    """A discrete chain's spacing recommended for a continuous process: one line naming the file and the entry when
    the run is read, not at every draw."""
    run = with_sampling(moons_run, tmp_path / "vp", {"sampler": "dpmpp_2m", "steps": 5, "spacing": "trailing"})
    meta = json.loads((run / "config.json").read_text())
    meta["config"]["process"]["name"] = "vp"  # a continuous process: no chain steps to pick
    meta["process"] = {"name": "vp"}
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DiffusaError, match=r"config\.json: sampling \(sampler dpmpp_2m, steps 5, spacing trailing\) "
                                           r"does not suit this model: spacing 'trailing' picks steps"):
        diffusa.load(run)
