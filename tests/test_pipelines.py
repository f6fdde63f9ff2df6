"""Pipelines (`diffusa.load(...)(...)`): the CLI's output bit for bit, every kind of run folder, one-line errors
naming the argument, callbacks, batches, likelihood."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIGITS_OVERRIDES, train_run

import diffusa
from diffusa.errors import DiffusaError
from diffusa.pipelines import Pipeline, Samples

TEXT = [*DIGITS_OVERRIDES, 'model.conditioning="text"', "model.text.width=32", "model.text.depth=1",
        "model.text.heads=2", "model.text.max_len=32", "train.steps=3"]


@pytest.fixture(scope="module")
def shipped() -> dict[str, Pipeline]:
    return {name: diffusa.load(name) for name in ("mnist-pixel", "mnist-text")}


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("cond") / "run", [*DIGITS_OVERRIDES, 'model.conditioning="class"',
                                                              "train.steps=3"])


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("text") / "run", TEXT)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusa.autoencoder import AutoencoderConfig
    from diffusa.tasks.autoencoder import train_autoencoder

    base = tmp_path_factory.mktemp("latent")
    ae = train_autoencoder("digits", base / "ae", AutoencoderConfig(channels=8, latent_channels=2), steps=3,
                           progress=False)
    return train_run(base / "run", [*DIGITS_OVERRIDES, f"data.latent='{ae}'", "train.steps=3"])


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run conditioned on a 2-channel 8x8 image concatenated to its input (an .npz with cond_images)."""
    base = tmp_path_factory.mktemp("imagecond")
    rng = np.random.default_rng(0)
    np.savez(base / "data.npz", x=rng.uniform(-1, 1, (32, 1, 8, 8)).astype(np.float32),
             cond_images=rng.uniform(-1, 1, (32, 2, 8, 8)).astype(np.float32))
    return train_run(base / "run", [f"data.name='{base / 'data.npz'}'", "train.steps=2", "train.batch_size=8",
                                    "train.sample_every=0", "model.net.channels=8"])


# -- the command line ----------------------------------------------------------------------------------------------
def test_cli_output_is_bit_identical_to_the_pipeline(cli, shipped: dict[str, Pipeline], cond_run: Path,
                                                     tmp_path: Path) -> None:
    cases = [
        (["sample", "mnist-pixel", "--n", 3, "--sampler", "ddim", "--steps", 4, "--seed", 2],
         shipped["mnist-pixel"], dict(n=3, sampler="ddim", steps=4, seed=2)),
        (["sample", "mnist-text", "--label", "all", "--n", 3, "--steps", 3, "--seed", 1],
         shipped["mnist-text"], dict(label="all", n=3, steps=3, seed=1)),
        (["generate", "a handwritten seven", "--n", 3, "--steps", 3, "--guidance-scale", 2],
         shipped["mnist-text"], dict(prompt="a handwritten seven", n=3, steps=3, guidance_scale=2)),
        (["sample", cond_run, "--label", 3, "--guidance-scale", 2, "--n", 5, "--sampler", "ancestral", "--steps", 4,
          "--variance", "beta", "--spacing", "even", "--seed", 7],
         diffusa.load(cond_run), dict(label=3, guidance_scale=2, n=5, sampler="ancestral", steps=4, variance="beta",
                                      spacing="even", seed=7)),
    ]
    for i, (argv, pipe, kwargs) in enumerate(cases):
        out = tmp_path / f"{i}.npz"
        r = cli(*argv, "--out", out)
        assert r.code == 0, r.err
        res = pipe(**kwargs)
        with np.load(out) as f:
            assert torch.equal(torch.from_numpy(f["samples"]), res.samples), argv
            assert np.array_equal(f["images"], res.images)


def test_the_readme_example_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = ('pipe = diffusa.load("mnist-text"); images = pipe("a handwritten seven", n=16, seed=1); '
               'images.save("seven.png")')
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert example.replace("; ", "\n") in readme
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"diffusa": diffusa}
    exec(example, scope)  # the README's own three lines
    assert (tmp_path / "seven.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    images = scope["images"]
    assert isinstance(images, Samples) and images.images.shape == (16, 28, 28, 1)
    assert images.settings["guidance_scale"] == 3 and images.settings["sampler"] == "dpmpp_2m"
    assert images.settings["steps"] == 20 and images.settings["nfe"] == 20


# -- run folders of each kind --------------------------------------------------------------------------------------
def test_run_folders_of_each_kind(digits_run: Path, moons_run: Path, cond_run: Path, text_run: Path,
                                  latent_run: Path, tmp_path: Path) -> None:
    for run, kwargs, shape in ((digits_run, {}, (4, 1, 8, 8)), (moons_run, {}, (4, 2)),
                               (cond_run, {"label": [0, 1, 2, 3]}, (4, 1, 8, 8)),
                               (text_run, {"prompt": "a handwritten 5"}, (4, 1, 8, 8)),
                               (latent_run, {}, (4, 1, 8, 8))):
        pipe = diffusa.load(run)
        a = pipe(**kwargs, n=4, steps=3, seed=3)
        assert a.samples.shape == shape and torch.isfinite(a.samples).all(), run
        assert torch.equal(a.samples, pipe(**kwargs, n=4, steps=3, seed=3).samples)  # same seed, same samples
        assert not torch.equal(a.samples, pipe(**kwargs, n=4, steps=3, seed=4).samples)
        a.save(tmp_path / "s.npz")
        with np.load(tmp_path / "s.npz") as f:
            assert torch.equal(torch.from_numpy(f["samples"]), a.samples)
            assert ("images" in f.files) == a.is_image
        a.save(tmp_path / "s.png")
        assert (tmp_path / "s.png").stat().st_size > 100
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s.png"]  # no temporary file left
    assert diffusa.load(latent_run).is_latent and diffusa.load(latent_run).data_shape == (2, 2, 2)
    with pytest.raises(DiffusaError, match="points, not images"):
        _ = diffusa.load(moons_run)(n=2, steps=2).images


def test_labels_prompts_and_guidance_are_recorded(cond_run: Path, text_run: Path) -> None:
    cond, text = diffusa.load(cond_run), diffusa.load(text_run)
    r = cond(label="all", n=12, steps=2, guidance_scale=2)
    assert r.labels.tolist() == [*range(10), 0, 1] and r.settings["guidance_scale"] == 2
    assert r.settings["nfe"] == 2  # both branches of the guidance in one batched call per step
    assert cond(label=[4, 5], steps=2).labels.tolist() == [4, 5]  # n from the list
    assert cond(label=torch.tensor([4, 5]), steps=2).settings["label"] == [4, 5]
    unguided = cond(n=3, steps=2).settings  # a class-conditional model without a label: its null label
    assert unguided["guidance_scale"] is None and unguided["sampler"] == "dpmpp_2m" and unguided["steps"] == 2
    # a text model is guided at w = 3 unless told otherwise; label= asks for "a handwritten K"
    a = text("a handwritten 3", n=2, steps=2)
    assert a.settings["guidance_scale"] == 3 and a.prompts == ["a handwritten 3"] * 2
    assert torch.equal(a.samples, text("a handwritten 3", n=2, steps=2, guidance_scale=3).samples)
    b = text(label=3, n=2, steps=2)
    assert b.prompts == ["a handwritten 3"] * 2 and torch.equal(b.samples, a.samples)
    assert text(["a 1", "a 2", "a 3"], steps=2).prompts == ["a 1", "a 2", "a 3"]


def test_classifier_guidance(digits_run: Path, tmp_path: Path) -> None:
    from diffusa.tasks.classifier import train_classifier

    clf = train_classifier(digits_run, tmp_path / "clf", steps=2, progress=False)
    pipe = diffusa.load(digits_run)
    r = pipe(label=[1, 2], classifier=clf, classifier_scale=4, steps=3)
    assert r.settings["classifier_scale"] == 4 and r.settings["classifier"] == str(clf)
    assert not torch.equal(r.samples, pipe(label=[1, 2], classifier=clf, classifier_scale=0, steps=3).samples)
    assert torch.equal(pipe(n=2, steps=3).samples, pipe(label=[1, 2], classifier=clf, classifier_scale=0,
                                                        steps=3).samples)  # s = 0: the unguided model


def test_image_conditioned_run(image_run: Path) -> None:
    pipe = diffusa.load(image_run)
    assert pipe.image_channels == 2 and "image-conditioned" in repr(pipe)
    img = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = pipe(n=3, steps=2, image=img)
    assert a.samples.shape == (3, 1, 8, 8)
    per_sample = pipe(n=3, steps=2, image=img.expand(3, 2, 8, 8))
    assert torch.equal(a.samples, per_sample.samples)  # one image for all, or one per sample
    pixels = ((img + 1) * 127.5).round().to(torch.uint8)
    as_float = pipe(n=3, steps=2, image=pixels.float() / 127.5 - 1).samples
    assert torch.equal(pipe(n=3, steps=2, image=pixels.permute(1, 2, 0).numpy()).samples, as_float)  # uint8 HWC
    assert pipe(n=3, steps=2, image=torch.zeros(2, 4, 4)).samples.shape == (3, 1, 8, 8)  # resized to the input
    assert not torch.equal(a.samples, pipe(n=3, steps=2, image=-img).samples)  # the image reaches the network
    for image, fragment in ((None, "give image="), (torch.zeros(3, 8, 8), "image has 3 channels"),
                            (torch.zeros(2, 8, 4), "image is 8x4"), (torch.zeros(2, 2, 8, 8), "image holds 2 images"),
                            (torch.full((2, 8, 8), math.nan), "NaN"), ("pic.png", "image must be a tensor")):
        with pytest.raises(DiffusaError, match=fragment):
            pipe(n=3, steps=2, image=image)


# -- bad input ----------------------------------------------------------------------------------------------------
def test_load_errors(tmp_path: Path, moons_run: Path) -> None:
    with pytest.raises(DiffusaError, match="does not exist; the shipped models are mnist-pixel, mnist-text"):
        diffusa.load("mnist-pixle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffusaError, match=r"is not a diffusa run: config\.json is missing"):
        diffusa.load(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DiffusaError, match="is a file, not a run folder"):
        diffusa.load(tmp_path / "file.txt")
    assert diffusa.load(moons_run).name == str(moons_run)


BAD = [
    ("digits_run", {"n": 0}, "n must be a positive integer"),
    ("digits_run", {"n": -2}, "n must be"),
    ("digits_run", {"n": 2.5}, "n must be"),
    ("digits_run", {"steps": 0}, "steps must be a positive integer"),
    ("digits_run", {"batch_size": 0}, "batch_size must be"),
    ("digits_run", {"seed": "one"}, "seed must be an integer"),
    ("digits_run", {"seed": 2**64}, r"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\], got 18446744073709551616"),
    ("digits_run", {"seed": -2**63 - 1}, "seed must be an integer in"),
    ("digits_run", {"sampler": ["x"]}, "sampler must be a sampler's name"),
    ("digits_run", {"steps": 5000}, "^steps 5000 exceeds the model's 1000 training steps"),  # not "--steps"
    ("digits_run", {"steps": 5000, "sampler": "ddim", "spacing": "even"}, "^steps 5000 exceeds"),
    ("digits_run", {"sampler": "ddim", "eta": "a"}, "eta must be a number"),
    ("digits_run", {"sampler": "dpm_pp"}, "unknown sampler 'dpm_pp'"),
    ("digits_run", {"spacing": "sideways"}, "unknown spacing 'sideways'"),
    ("digits_run", {"eta": -0.5}, "eta must be a finite number >= 0"),
    ("digits_run", {"eta": math.inf}, "eta must be"),
    ("digits_run", {"sampler": "heun", "eta": 0.5}, "has no option 'eta'"),
    ("digits_run", {"prompt": "a 3"}, "not text-conditional and takes no prompt"),
    ("digits_run", {"label": 3}, "label: .* is unconditional"),
    ("digits_run", {"guidance_scale": 2}, "guidance_scale guides towards a label or a prompt; .* is unconditional"),
    ("digits_run", {"classifier_scale": 2}, "classifier_scale scales classifier guidance: give classifier="),
    ("digits_run", {"image": torch.zeros(1, 8, 8)}, "image: .* takes no conditioning image"),
    ("digits_run", {"callback": 3}, "callback must be a function"),
    ("cond_run", {"label": 10}, r"label must be 'all' or a class in 0\.\.9"),
    ("cond_run", {"label": -1}, "label must be"),
    ("cond_run", {"label": "seven"}, "label must be"),
    ("cond_run", {"label": [1, 2], "n": 3}, "label holds 2 entries for n=3"),
    ("cond_run", {"label": 1.5}, "label must be"),
    ("cond_run", {"guidance_scale": 2}, "guidance_scale needs a class"),
    ("cond_run", {"label": 1, "guidance_scale": math.nan}, "guidance_scale must be a finite number"),
    ("cond_run", {"label": 1, "guidance_scale": math.inf}, "guidance_scale must be a finite number"),
    ("cond_run", {"label": 1, "guidance_scale": True}, "guidance_scale must be a finite number"),
    ("cond_run", {"label": 1, "classifier": "x", "classifier_scale": math.nan}, "classifier_scale must be a finite"),
    ("text_run", {}, "is text-conditional: give a prompt"),
    ("text_run", {"prompt": "a 3", "label": 3}, "a prompt or a label, not both"),
    ("text_run", {"prompt": 3}, "prompt must be a string"),
    ("text_run", {"prompt": ["a 1", "a 2"], "n": 3}, "prompt holds 2 entries for n=3"),
    ("text_run", {"label": 12}, r"label must be 'all' or a class in 0\.\.9"),
    ("text_run", {"prompt": "a 3", "classifier": "x"}, "a text model is guided by guidance_scale"),
    ("text_run", {"prompt": "a 3", "guidance_scale": math.nan}, "guidance_scale must be a finite number"),
]


@pytest.mark.parametrize("fixture, kwargs, fragment", BAD)
def test_bad_arguments_are_one_error_naming_them(request: pytest.FixtureRequest, fixture: str,
                                                 kwargs: dict[str, object], fragment: str) -> None:
    pipe = diffusa.load(request.getfixturevalue(fixture))
    with pytest.raises(DiffusaError, match=fragment) as info:
        pipe(**{"steps": 2, **kwargs})
    assert "\n" not in str(info.value)


def test_device_is_checked_before_loading(digits_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device torch cannot parse, or one this machine lacks, is one DiffusaError naming it (was a RuntimeError,
    or an AssertionError from torch deep in loading) before any weights load."""
    pipe = diffusa.load(digits_run, device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    def no_loading(*_: object, **__: object) -> None:
        raise AssertionError("loaded before the device was checked")

    monkeypatch.setattr("diffusa.runs.load_run", no_loading)
    for device, fragment in (("foo", "device 'foo' is not a device: use 'cpu', 'cuda'"),
                             ("cuda", "device 'cuda': this machine has no CUDA device"),
                             ("cuda:1", "device 'cuda:1': this machine has no CUDA device"),
                             (torch.device("cuda"), "this machine has no CUDA device"),
                             ("mps", "device 'mps': not available on this machine"),
                             ("meta", "device 'meta': not available"), ([0], "is not a device")):
        with pytest.raises(DiffusaError, match=fragment):
            diffusa.load(digits_run, device=device)
        with pytest.raises(DiffusaError, match=fragment):
            Pipeline(pipe.run, device=device)


def test_seeds_are_the_range_torch_takes(digits_run: Path) -> None:
    """[-2**63, 2**64 - 1] (what torch.Generator.manual_seed accepts), numpy integers included, for sampling, the
    noise it starts from, and likelihood; one helper refuses the rest for all three."""
    pipe = diffusa.load(digits_run)
    for seed in (-2**63, 2**64 - 1):
        assert pipe(n=1, steps=1, seed=seed).settings["seed"] == seed
    assert torch.equal(pipe(n=1, steps=1, seed=np.int64(7)).samples, pipe(n=1, steps=1, seed=7).samples)
    assert torch.equal(pipe.noise(2, np.int64(7)), pipe.noise(2, 7))
    x = torch.zeros(1, 1, 8, 8)
    for bad in (2**64, -2**63 - 1, 1.0, True):
        for call, kwargs in ((pipe, {"n": 1, "steps": 1}), (pipe.noise, {"n": 1}), (pipe.likelihood, {"x": x})):
            with pytest.raises(DiffusaError, match="seed must be an integer in"):
                call(**kwargs, seed=bad)


def test_one_rule_for_guidance_scales_and_eta(cond_run: Path) -> None:
    """A guidance scale is a finite number in the pipeline and in ClassifierFreeGuided alike (inf made NaN samples
    there); eta is the samplers' own check_eta, called early by the pipeline."""
    from diffusa.guidance import ClassifierFreeGuided, null_labels
    from diffusa.samplers.common import check_eta

    pipe = diffusa.load(cond_run)
    for bad in (math.inf, -math.inf, math.nan, True, "2", 10**400):
        with pytest.raises(DiffusaError, match="guidance scale must be a finite number"):
            ClassifierFreeGuided(pipe.run.denoiser, bad, lambda c: null_labels(c, 10))
        with pytest.raises(DiffusaError, match="guidance_scale must be a finite number"):
            pipe(n=1, steps=1, label=1, guidance_scale=bad)
    assert ClassifierFreeGuided(pipe.run.denoiser, np.float32(2), lambda c: null_labels(c, 10)).scale == 2.0
    for eta in (-0.5, math.inf, math.nan):
        with pytest.raises(DiffusaError) as samplers:
            check_eta(eta)
        with pytest.raises(DiffusaError) as pipeline:
            pipe(n=1, steps=1, sampler="ddim", eta=eta)
        assert str(pipeline.value) == str(samplers.value)


def test_generate_refuses_a_class_conditional_model(cli, cond_run: Path, tmp_path: Path) -> None:
    r = cli("generate", "--model", cond_run, "--n", 2, "--out", tmp_path / "x.png")
    assert r.code == 2 and "is class-conditional: use diffusa sample" in r.err and r.err.count("\n") == 1, r.err
    r = cli("sample", cond_run, "--label", 1, "--guidance-scale", "nan", "--out", tmp_path / "x.png")
    assert r.code == 2 and "guidance_scale must be a finite number" in r.err and r.err.count("\n") == 1, r.err


# -- callbacks and batches ----------------------------------------------------------------------------------------
def test_callback_sees_every_step_and_stops_early(digits_run: Path) -> None:
    pipe = diffusa.load(digits_run)
    seen: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []

    def record(step: int, t: float, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        seen.append((step, t, x_t.clone(), x0.clone()))

    full = pipe(n=3, sampler="ddim", steps=6, seed=1, callback=record)
    assert [s[0] for s in seen] == list(range(6)) and full.stopped_at is None
    times = [s[1] for s in seen]
    assert all(a > b for a, b in itertools.pairwise(times)) and times[-1] == 0.0
    assert torch.equal(seen[-1][2], full.samples)  # the last step's state is the result
    assert torch.equal(full.samples, pipe(n=3, sampler="ddim", steps=6, seed=1).samples)  # a callback changes nothing

    calls: list[int] = []
    stopped = pipe(n=3, sampler="ddim", steps=6, seed=1, callback=lambda i, *_: calls.append(i) or i == 2)
    assert calls == [0, 1, 2] and stopped.stopped_at == 2 and stopped.settings["nfe"] == 3
    assert torch.equal(stopped.samples, seen[2][3])  # the x0 predicted at the step it stopped
    # in batches, every batch stops after the same step: the same samples as in one batch
    calls.clear()
    batched = pipe(n=3, sampler="ddim", steps=6, seed=1, batch_size=2, callback=lambda i, *_: calls.append(i) or i == 2)
    assert calls == [0, 1, 2, 0, 1, 2] and batched.stopped_at == 2
    assert torch.allclose(batched.samples, stopped.samples, atol=1e-6)


def test_batch_size_does_not_change_the_samples(digits_run: Path, text_run: Path) -> None:
    """For a deterministic sampler: x_T of all n is drawn first, so batches change only how much runs at once."""
    for run, kwargs in ((digits_run, {}), (text_run, {"prompt": ["a 1", "a 2", "a 3", "a 4", "a 5"]})):
        pipe = diffusa.load(run)
        one = pipe(**kwargs, n=5, steps=4, seed=2, sampler="dpmpp_2m")
        for b in (1, 2, 3):
            assert torch.allclose(pipe(**kwargs, n=5, steps=4, seed=2, sampler="dpmpp_2m", batch_size=b).samples,
                                  one.samples, atol=1e-6)


def test_nfe_counts_network_calls(digits_run: Path) -> None:
    pipe = diffusa.load(digits_run)
    assert pipe(n=2, sampler="heun", steps=4).settings["nfe"] == 7  # two per step, the last (to sigma 0) one
    assert pipe(n=2, sampler="ddim", steps=5).settings["nfe"] == 5


# -- likelihood ---------------------------------------------------------------------------------------------------
def test_likelihood_is_eval_bpd(cli, digits_run: Path, tmp_path: Path) -> None:
    from diffusa.data import load_dataset

    x = load_dataset("digits", "test").x[:6]
    pipe = diffusa.load(digits_run)
    res = pipe.likelihood(x, terms=3, seed=1, plot=tmp_path / "p.png")
    r = cli("eval", digits_run, "--bpd", "--n", 6, "--terms", 3, "--seed", 1, "--plot", tmp_path / "q.png")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out.pop("run") == str(digits_run) and out.pop("plot") == str(tmp_path / "q.png")
    assert out.pop("diffusa_version")  # the mark of a file diffusa wrote
    assert res.pop("plot") == str(tmp_path / "p.png") and res == out
    assert res["method"] == "variational bound" and res["terms"] == 3 and res["n"] == 6 and res["bpd"] > 0
    assert pipe.likelihood(x[:2])["terms"] == 100 and pipe.likelihood(x[:2])["plot"] is None
    for kwargs, fragment in (({"rtol": 1e-3}, "rtol: not for this model"), ({"terms": 0}, "terms must be"),
                             ({"terms": "some"}, "terms must be"), ({"seed": 1.5}, "seed must be")):
        with pytest.raises(DiffusaError, match=fragment):
            pipe.likelihood(x, **kwargs)


def test_likelihood_takes_tensors_and_arrays_of_the_models_shape(digits_run: Path) -> None:
    """Float (N, C, H, W) in [-1, 1] or uint8 pixels (N, H, W, C) as `Samples.images` holds them, as tensors or
    numpy arrays, give the same bits/dim; another type or shape is one DiffusaError naming x (was an
    AttributeError, or a convolution's RuntimeError)."""
    pipe = diffusa.load(digits_run)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    x = torch.from_numpy(pixels).movedim(-1, 1).float() / 127.5 - 1
    bpd = pipe.likelihood(x, terms=2, seed=1)["bpd"]
    for same in (pixels, torch.from_numpy(pixels), pixels[..., 0], torch.from_numpy(pixels).movedim(-1, 1),
                 x.numpy(), x.double()):
        assert pipe.likelihood(same, terms=2, seed=1)["bpd"] == bpd
    samples = pipe(n=2, steps=2)
    assert pipe.likelihood(samples.images, terms=2)["bpd"] > 0  # a pipeline's own uint8 images
    shape = r"x must be this model's images: float \(N, 1, 8, 8\) in \[-1, 1\], or uint8 pixels \(N, 8, 8, 1\)"
    for bad, fragment in ((torch.zeros(2, 1, 28, 28), shape + r"; got torch.float32 of shape \(2, 1, 28, 28\)"),
                          (torch.zeros(1, 8, 8), shape), (np.zeros((2, 8, 8, 3), np.uint8), shape),
                          (np.zeros((2, 8, 8, 1), np.int32), "x must be uint8 pixels or float images"),
                          (torch.zeros(2, 1, 8, 8, dtype=torch.long), "x must be uint8 pixels or float images"),
                          ([x], "x must be a tensor or a numpy array of images, got list"),
                          (torch.full((1, 1, 8, 8), math.nan), "x holds NaN")):
        with pytest.raises(DiffusaError, match=fragment) as info:
            pipe.likelihood(bad, terms=2)
        assert "\n" not in str(info.value)


def test_a_cpu_classifier_guides_a_model_on_another_device() -> None:
    """The classifier's log-probability is taken on the CPU and its gradient flows back through the copies (here
    CPU to CPU: the same numbers)."""
    from diffusa.pipelines.request import _on_cpu

    def log_prob(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -(x - y.view(-1, 1)).pow(2).sum(1) * t

    x = torch.randn(3, 4, requires_grad=True)
    t, y = torch.full((3,), 0.5), torch.tensor([0, 1, 2])
    (g,) = torch.autograd.grad(_on_cpu(log_prob)(x, t, y).sum(), x)
    assert torch.allclose(g, -2 * 0.5 * (x - y.view(-1, 1)).detach())
