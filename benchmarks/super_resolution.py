"""Super-resolution on mnist5k (issue 19, item 3): SR3 upscalers (Saharia et al. 2021) 7->28 (4x) and 14->28 (2x)
on held-out digits beside bicubic; a 14x14 class-conditional base model followed by the 2x upscaler (cascaded
diffusion, Ho et al. 2022) with and without noise-conditioning augmentation, against a single-stage 28x28 model
trained for the same minutes; and a 256x256 -> 1024x1024 tiled upscale's peak memory.

    OMP_NUM_THREADS=2 python benchmarks/super_resolution.py train     # the six runs under runs/sr/ (~60 min)
    python benchmarks/super_resolution.py eval [--n 500]              # both upscalers, held-out digits (~6 min)
    python benchmarks/super_resolution.py residual [--steps 1200]     # 4x: SR3 vs residual vs residual EDM
    python benchmarks/super_resolution.py cascade [--n 500]           # cascade vs single stage (~8 min)
    python benchmarks/super_resolution.py train --budget 20 --only base14,sr2,single28 --runs runs/sr20  # 40 min
    python benchmarks/super_resolution.py tiled                       # 256 -> 1024 in tiles, peak memory (~4 min)
    python benchmarks/super_resolution.py rgb [--rgb-run R] [--n 200]  # 16 -> 64 RGB scenes (training: ~20 min)
    python benchmarks/super_resolution.py rgb-cascade --n 200          # 16x16 base + it vs one 64x64 model (~45 min)
    python benchmarks/super_resolution.py report --doc docs/super_resolution.md
    python benchmarks/super_resolution.py --quick --out table.md      # every stage on 8x8 digits, in ./quick

`train` trains whichever run is missing: sr4 (data.super_resolution=4), sr2 (=2), sr2_noaug (=2, without
augmentation: data.cond_noise_max=0), base14 (data.image_size=14, class-conditional) for --steps each, and single28
(class-conditional 28x28) for the minutes base14 and sr2 took together (train.max_minutes; its step count is a
ceiling). With --budget M (minutes) the comparison is at equal minutes with every schedule completed: base14
trains for --base-share of M, each upscaler for the rest, single28 for M (train.budget_minutes fits each run's
steps to its minutes); --only names the runs to train (e.g. base14,sr2,single28). Held-out digits: the first --n
of the test split, every class in turn. Upscaling: DPM-Solver++(2M),
--sample-steps steps, seed 0, the run's own sampling level. PSNR and SSIM (Wang et al. 2004: Gaussian window 11,
sigma 1.5, on [0, 1] pixels) against the originals; FD: Frechet distance in the digit judge's features to the 1,000
held-out digits; accuracy: the judge's argmax against the digit's label; consistency: the output shrunk back (block
averages, as the input was made) against the input, mean squared error in [-1, 1] pixels. Cascade: --n samples,
labels 0..9 in turn, the base model at guidance 1 (the conditional model); FD and accuracy against the asked
labels. Tiled: a mosaic of shrunk held-out digits, 256x256, upscaled 4x in tiles of the model's 7x7 input,
--tiled-steps steps, in a child process whose peak resident memory is read from the OS (and that of a child that
only loads the model, for the baseline). RGB: a 4x upscaler trained on a folder of synthetic 64x64 scenes
(`diffusa scenes`, seed 0; the default recipe, data.super_resolution=4), upscaling held-out scenes
(seed 1) beside bicubic; no judge knows scenes, so realism is the sliced Wasserstein distance of local statistics
(Karras et al. 2018, App. D: `diffusa.metrics.laplacian_swd`) to other real scenes (seed 2), and detail the mean
squared Laplacian against the originals'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _tables import emit, run_stages, stage_parser, write_json

import diffusa
from diffusa.checkpoint import load_tensors, save_tensors
from diffusa.config import load_config
from diffusa.data import load_dataset, resize_images
from diffusa.errors import DiffusaError
from diffusa.train import diffusion_engine, last_log

os.environ.setdefault("MPLCONFIGDIR", str(Path(__file__).resolve().parent.parent / ".cache" / "matplotlib"))

COMMON = ["train.sample_every=0", "train.checkpoint_every=200"]
NOT_MEASURED = "not yet measured"
DOC_START, DOC_END = "<!-- super_resolution.py results: start -->", "<!-- super_resolution.py results: end -->"


# -- measures -----------------------------------------------------------------------------------------------------
def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE), per image, then averaged."""
    mse = (x - ref).square().flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(4 / mse)).mean())


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004, eq. 13) on [0, 1] pixels: Gaussian window 11, sigma 1.5 (narrower on images
    smaller than 11 pixels), C1 = 0.01^2, C2 = 0.03^2, over the valid region."""
    a, b = (x.double() + 1) / 2, (ref.double() + 1) / 2
    size = min(11, a.shape[-1], a.shape[-2])
    size -= 1 - size % 2
    sigma = 1.5 * size / 11
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(a.shape[1], 1, size, size)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, w, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.flatten(1).mean(1).mean())


def judged(x: torch.Tensor, labels: torch.Tensor, ref_feats: torch.Tensor) -> dict[str, float]:
    """FD to the held-out digits' features and the judge's accuracy against `labels`."""
    from diffusa.metrics import classify, frechet_distance

    feats, probs = classify(x)
    return {"fd": frechet_distance(feats, ref_feats), "accuracy": float((probs.argmax(1) == labels).float().mean())}


def held_out(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the first n held-out digits, classes in turn; their labels; the judge's features of the whole split)."""
    from diffusa.metrics import classify

    test = load_dataset(args.data, "test")
    per_class = [torch.nonzero(test.labels == c).flatten() for c in range(10)]
    idx = torch.stack([p[: -(-args.n // 10)] for p in per_class], 1).flatten()[: args.n]
    return test.x[idx], test.labels[idx], classify(test.x)[0]


# -- stages -------------------------------------------------------------------------------------------------------
def run_dir(args: argparse.Namespace, name: str) -> Path:
    """A run of this benchmark: under --runs, unless --use NAME=RUN points it elsewhere (a shipped model's name, e.g.
    --use sr4=mnist-sr, or another run folder; `train` leaves those alone)."""
    from diffusa.shipped import run_path

    return run_path(dict(args.use)[name]) if name in dict(args.use) else Path(args.runs) / name


def use_pair(text: str) -> tuple[str, str]:
    """--use NAME=RUN."""
    name, sep, run = text.partition("=")
    if not sep or not name or not run:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=RUN, e.g. sr4=mnist-sr")
    return name, run


def runs(args: argparse.Namespace) -> dict[str, list[str]]:
    """Run name -> its overrides (single28 is trained for the others' minutes: `cmd_train`)."""
    return {"sr4": ["data.super_resolution=4"], "sr2": ["data.super_resolution=2"],
            "sr2_noaug": ["data.super_resolution=2", "data.cond_noise_max=0"],
            "base14": [f"data.image_size={args.base_size}", "model.conditioning='class'"]}


def cmd_train(args: argparse.Namespace) -> None:
    """Train whichever run is missing (of --only, if given). With --budget, each run's step count is fitted to its
    minutes (train.budget_minutes: the cosine schedule ends on time): base14 --base-share of the budget, each
    upscaler the rest, single28 the whole; otherwise the step options, single28 stopped after base14 + sr2's
    minutes (train.max_minutes)."""
    base = [f"data.name='{args.data}'", *COMMON, *args.set]
    only = set(args.only.split(",")) if args.only else None
    known = [*runs(args), "single28"]
    if only is not None and (unknown := sorted(only - set(known))):
        raise SystemExit(f"error: --only {args.only}: unknown run(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.budget < 0 or (args.budget > 0 and not 0 < args.base_share < 1):
        raise SystemExit(f"error: --budget {args.budget:g} --base-share {args.base_share:g}: the budget must be >= 0 "
                         "and the base's share strictly between 0 and 1")
    for name, overrides in runs(args).items():
        out = run_dir(args, name)
        if only is not None and name not in only:
            continue
        if name not in dict(args.use) and not (out / "model.safetensors").exists():
            t0 = time.time()
            share = args.base_share if name == "base14" else 1 - args.base_share
            length = (f"train.budget_minutes={round(args.budget * share, 4)}"
                      if args.budget > 0 else f"train.steps={args.base_steps if name == 'base14' else args.steps}")
            cfg = load_config(overrides=[*base, *overrides, length])
            diffusion_engine(cfg, out, progress=False).fit()
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    single = run_dir(args, "single28")
    if (only is None or "single28" in only) and not (single / "model.safetensors").exists():
        if args.budget > 0:
            length = [f"train.budget_minutes={args.budget}"]
        else:
            logs = {k: last_log(run_dir(args, k)) for k in ("base14", "sr2")}
            if missing := [k for k, log in logs.items() if "elapsed_s" not in log]:
                raise SystemExit(f"error: single28 trains for the minutes of base14 and sr2; {', '.join(missing)} "
                                 "not trained yet (train it, or give --budget)")
            minutes = sum(log["elapsed_s"] for log in logs.values()) / 60
            length = [f"train.steps={args.single_steps}", f"train.max_minutes={minutes}"]
        cfg = load_config(overrides=[*base, "model.conditioning='class'", *length])
        diffusion_engine(cfg, single, progress=False).fit()
        print(f"single28: {last_log(single)['elapsed_s'] / 60:.1f} min", flush=True)


def measure_upscaler(args: argparse.Namespace, name: str, x: torch.Tensor, y: torch.Tensor, ref: torch.Tensor,
                     figure: str | None = None) -> dict:
    """Run `name` (`run_dir`) on the held-out digits x (labels y) beside bicubic: PSNR, SSIM, FD to ref, judge
    accuracy and consistency of each; its strip of rows is written to --img as `figure` (default sr_rows_{F}x)."""
    from diffusa.viz import save_strip

    pipe = diffusa.load(run_dir(args, name))
    source = pipe.image_condition
    low = source.low_res(x)
    t0 = time.time()
    res = pipe.upscale(low, sampler=args.sampler, steps=args.sample_steps, seed=0, noise_level=args.noise_level)
    seconds = time.time() - t0
    bicubic = F.interpolate(low, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    row = {"run": dict(args.use).get(name, str(run_dir(args, name))), "sampler": res.settings["sampler"],
           "factor": source.factor, "input": list(low.shape[-2:]), "noise_level": res.settings["noise_level"],
           "seconds": seconds, "nfe": res.settings["nfe"]}
    for method, out in (("diffusion", res.samples), ("bicubic", bicubic)):
        row[method] = {"psnr": psnr(out, x), "ssim": ssim(out, x), **judged(out, y, ref),
                       "consistency_mse": float((source.low_res(out) - low).square().mean())}
    print(row, flush=True)
    k, figure = min(8, len(x)), figure or f"sr_rows_{source.factor}x"
    save_strip([F.interpolate(low[:k], size=x.shape[-2:], mode="nearest"), bicubic[:k], res.samples[:k], x[:k]],
               Path(args.img) / f"{figure}.png", ["low-res", "bicubic", "diffusion", "original"])
    return row


def cmd_eval(args: argparse.Namespace) -> None:
    """Both upscalers on held-out digits, beside bicubic."""
    x, y, ref = held_out(args)
    rec: dict = {"n": len(x), "real": judged(x, y, ref),
                 "upscalers": [measure_upscaler(args, name, x, y, ref) for name in ("sr4", "sr2")]}
    write_json(Path(args.raw) / "super_resolution_eval.json", rec)


RESIDUAL_RUNS = {"sr4": [], "sr4_res": ["model.residual=true"],
                 "sr4_res_edm": ["model.residual=true", "process.name='edm'"]}  # residual: over data.sr=4


def cmd_residual(args: argparse.Namespace) -> None:
    """4x digit upscalers at equal steps: the default (SR3: the image, noise-conditioning augmentation), predicting
    around the upsampled input (model.residual: SRDiff) with the default process, and with EDM at the measured
    residual std; each trained for --steps if missing, then measured as `eval` measures."""
    base = [f"data.name='{args.data}'", *COMMON, *args.set, "data.super_resolution=4", f"train.steps={args.steps}"]
    for name, overrides in RESIDUAL_RUNS.items():
        out = run_dir(args, name)
        if name not in dict(args.use) and not (out / "model.safetensors").exists():
            diffusion_engine(load_config(overrides=[*base, *overrides]), out, progress=False).fit()
    x, y, ref = held_out(args)
    rec: dict = {"n": len(x), "real": judged(x, y, ref), "upscalers": []}
    for name in RESIDUAL_RUNS:
        row = measure_upscaler(args, name, x, y, ref, figure=f"sr_rows_{name}")
        cfg = json.loads((run_dir(args, name) / "config.json").read_text())["config"]
        log = last_log(run_dir(args, name))
        row.update(name=name, process=cfg["process"]["name"], residual=bool(cfg["model"].get("residual")),
                   sigma_data=cfg["process"].get("sigma_data"), cond_noise_max=cfg["data"]["cond_noise_max"],
                   train_steps=log.get("step"), train_minutes=log.get("elapsed_s", math.nan) / 60)
        rec["upscalers"].append(row)
    write_json(Path(args.raw) / "super_resolution_residual.json", rec)


def cmd_cascade(args: argparse.Namespace) -> None:
    """The 14x14 base model + 2x upscaler, with and without augmentation, against the single-stage model; and the
    augmented upscaler alone on held-out digits shrunk to the base's size (the cascade with a perfect base: what the
    upscaler costs, the rest is the base's)."""
    from diffusa.pipelines import cascade
    from diffusa.viz import save_image_grid

    x, y, ref = held_out(args)
    labels = torch.arange(args.n) % 10
    base = diffusa.load(run_dir(args, "base14"))
    rec: dict = {"n": args.n, "rows": []}
    variants = [("sr2", level) for level in args.levels] + [("sr2_noaug", 0.0)]
    for name, level in variants:
        if not (run_dir(args, name) / "model.safetensors").exists() and name not in dict(args.use):
            print(f"{name}: not trained (train --only left it out), its rows skipped", flush=True)
            continue
        up = diffusa.load(run_dir(args, name))
        if level > up.image_condition.noise_max:
            continue
        t0 = time.time()
        res = cascade(base, up, n=args.n, label="all", steps=args.sample_steps, noise_level=level, seed=0)
        row = {"model": f"cascade: base14 + {name}", "augmented": up.image_condition.augmented,
               "noise_level": level, **judged(res.samples, labels, ref), "seconds": time.time() - t0}
        rec["rows"].append(row)
        print(row, flush=True)
        save_image_grid(res.samples[:64], Path(args.img) / f"sr_cascade_{name}_{level:g}.png")
        if name == "sr2" and level == 0:
            real = up.upscale(up.image_condition.low_res(x), steps=args.sample_steps, seed=0, noise_level=0.0)
            rec["rows"].append({"model": "sr2 alone, on real digits shrunk to the base's size", "augmented": True,
                                "noise_level": 0.0, **judged(real.samples, y, ref)})
            print(rec["rows"][-1], flush=True)
    single = diffusa.load(run_dir(args, "single28"))
    t0 = time.time()
    res = single(n=args.n, label="all", steps=args.sample_steps, seed=0)
    rec["rows"].append({"model": "single stage 28x28", "augmented": None, "noise_level": None,
                        **judged(res.samples, labels, ref), "seconds": time.time() - t0})
    save_image_grid(res.samples[:64], Path(args.img) / "sr_cascade_single.png")
    trained = [k for k in ("base14", "sr2", "sr2_noaug", "single28")
               if (run_dir(args, k) / "model.safetensors").exists()]
    rec["minutes"] = {k: last_log(run_dir(args, k)).get("elapsed_s", math.nan) / 60 for k in trained}
    rec["steps"] = {k: last_log(run_dir(args, k)).get("step") for k in rec["minutes"]}
    print(rec["rows"][-1], rec["minutes"], flush=True)
    write_json(Path(args.raw) / "super_resolution_cascade.json", rec)


def laplacian_energy(x: torch.Tensor) -> float:
    """Mean squared response to the 4-neighbour Laplacian: the images' fine detail (sharpness)."""
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype).expand(x.shape[1], 1, 3, 3)
    return float(F.conv2d(x, k, groups=x.shape[1]).square().mean())


PROBE_TIMES = [0.1, 0.3, 0.5, 0.8, 0.95]  # rgb: where the denoiser's x0 error is read


@torch.no_grad()
def x0_errors(pipe: diffusa.Pipeline, x: torch.Tensor, low: torch.Tensor) -> list[float]:
    """The denoiser's x0 mean squared error on x noised to each of PROBE_TIMES (seed 0), given the clean condition."""
    from diffusa.cond import Cond

    den, g, out = pipe.run.denoiser, torch.Generator().manual_seed(0), []
    cond = Cond(image=low, image_level=torch.zeros(len(x))) if pipe.image_condition.augmented else Cond(image=low)
    for t in PROBE_TIMES:
        tt = torch.full((len(x),), t)
        a, s = (v.float().view(-1, 1, 1, 1) for v in den.process.alpha_sigma(tt))
        out.append(float((den(a * x + s * torch.randn(x.shape, generator=g), tt, cond).x0 - x).square().mean()))
    return out


def cmd_rgb(args: argparse.Namespace) -> None:
    """4x upscalers trained on a user-style folder of RGB images (synthetic scenes, diffusa.data.scenes: the
    folder holds seed 0), on held-out scenes (seed 1) beside bicubic; the first --rgb-run is trained here first
    if missing. The strip figure: the last run."""
    from diffusa.data.scenes import render_scenes
    from diffusa.metrics import laplacian_swd
    from diffusa.viz import save_strip

    runs_ = [Path(r) for r in args.rgb_run]
    train_rgb(args, runs_[0], ["data.super_resolution=4", f"data.image_size={args.rgb_size}"], args.rgb_steps)
    size = args.rgb_size
    x, ref = render_scenes(args.n, size, seed=1), render_scenes(args.n, size, seed=2)  # held out; SWD's reference
    low = resize_images(x, size // 4)  # block averages, as ImageCondition.low_res makes the upscalers' inputs
    bicubic = F.interpolate(low, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)

    def measured(out: torch.Tensor) -> dict:
        return {"psnr": psnr(out, x), "ssim": ssim(out, x), "swd": laplacian_swd(out, ref),
                "laplacian_energy": laplacian_energy(out),
                "consistency_mse": float((resize_images(out, size // 4) - low).square().mean())}

    rec: dict = {"n": args.n, "size": size, "factor": 4, "steps": args.sample_steps, "probe_times": PROBE_TIMES,
                 "real": {"swd": laplacian_swd(x, ref), "laplacian_energy": laplacian_energy(x)},
                 "bicubic": {**measured(bicubic), "x0_errors": [float((bicubic - x).square().mean())]}, "runs": []}
    before = _load(Path(args.raw) / "super_resolution_rgb.json")
    if before is not None and (before["n"], before["size"], before["steps"]) == (args.n, size, args.sample_steps):
        # rows of runs measured before on the same scenes and not named now (their folders may be gone) are kept
        named = {str(r) for r in runs_}
        rec["runs"] = [r for r in before["runs"] if r["run"] not in named]
    for run in runs_:
        pipe = diffusa.load(run)
        t0 = time.time()
        res = pipe.upscale(low, sampler=args.sampler, steps=args.sample_steps, seed=0, noise_level=args.noise_level)
        seconds = time.time() - t0
        cfg = json.loads((run / "config.json").read_text())
        log = last_log(run)
        row = {"run": str(run), "sampler": res.settings["sampler"], "noise_level": res.settings["noise_level"],
               "nfe": res.settings["nfe"], "seconds": seconds, "train_steps": log.get("step"),
               "train_minutes": log.get("elapsed_s", math.nan) / 60,
               "patch_size": cfg["network"]["config"].get("patch_size", 1),
               "weighting": cfg["config"]["loss"]["weighting"], "init": (cfg.get("init") or {}).get("from"),
               "process": cfg["config"]["process"]["name"], "prediction": cfg["config"]["model"]["prediction"],
               "residual": bool(cfg["config"]["model"].get("residual")),
               **measured(res.samples), "x0_errors": x0_errors(pipe, x, low)}
        rec["runs"].append(row)
        print(row, flush=True)
        write_json(Path(args.raw) / "super_resolution_rgb.json", rec)
        k = min(6, len(x))
        save_strip([F.interpolate(low[:k], size=x.shape[-2:], mode="nearest"), bicubic[:k], res.samples[:k], x[:k]],
                   Path(args.img) / "sr_rgb_rows.png", ["low-res", "bicubic", "diffusion", "original"])


def rgb_folder(args: argparse.Namespace) -> Path:
    """The RGB training folder (synthetic scenes, seed 0), written under --runs unless there."""
    from diffusa.data.scenes import write_scene_folder

    folder = Path(args.runs) / "scenes"
    if not folder.exists():
        write_scene_folder(folder, args.rgb_scenes, args.rgb_size)
    return folder


def train_rgb(args: argparse.Namespace, run: Path, overrides: list[str], steps: int) -> None:
    """The default recipe on the RGB folder with `overrides`, `steps` steps, unless `run` is trained already."""
    if not (run / "model.safetensors").exists():
        cfg = load_config(overrides=[f"data.name={json.dumps(str(rgb_folder(args)))}", *COMMON, *args.set,
                                     *overrides, f"train.steps={steps}"])
        diffusion_engine(cfg, run, progress=False).fit()


def cmd_rgb_cascade(args: argparse.Namespace) -> None:
    """Cascaded diffusion at 64x64 RGB: an unconditional 16x16 base model + the 4x upscaler (--rgb-run), against
    a single-stage 64x64 model trained for the minutes of both (trained here if missing; train.max_minutes, its
    steps a ceiling, --rgb-single-steps); realism of --n samples of each by `laplacian_swd` to held-out scenes."""
    from diffusa.data.scenes import render_scenes
    from diffusa.metrics import laplacian_swd
    from diffusa.pipelines import cascade
    from diffusa.viz import save_image_grid

    size, low, up_run = args.rgb_size, args.rgb_size // 4, Path(args.rgb_run[0])
    base_run, single_run = Path(args.runs) / f"base{low}_rgb", Path(args.runs) / f"single{size}_rgb"
    # both at full resolution (patch 1), as the upscaler; the single-stage model is the upscaler's network less
    # the condition image, so the comparison is of the pipelines, not of two architectures
    net = json.loads((up_run / "config.json").read_text())["network"]["config"]
    same = [f"model.net.{k}={json.dumps(net[k])}" for k in ("channels", "channel_mult", "attention_resolutions",
                                                             "num_res_blocks", "patch_size")]
    train_rgb(args, base_run, [f"data.image_size={low}", "model.net.patch_size=1"], args.rgb_base_steps)
    minutes = sum(last_log(r).get("elapsed_s", 0.0) for r in (base_run, up_run)) / 60
    train_rgb(args, single_run, [f"data.image_size={size}", *same, f"train.max_minutes={minutes}"],
              args.rgb_single_steps)
    ref = render_scenes(args.n, size, seed=1)
    base, up, single = (diffusa.load(r) for r in (base_run, up_run, single_run))
    rec: dict = {"n": args.n, "steps": args.sample_steps, "rows": [],
                 "real": laplacian_swd(render_scenes(args.n, size, seed=2), ref)}
    for name, draw in (("cascade", lambda: cascade(base, up, n=args.n, steps=args.sample_steps, seed=0)),
                       ("single stage", lambda: single(n=args.n, steps=args.sample_steps, seed=0))):
        t0 = time.time()
        res = draw()
        seconds = time.time() - t0
        rec["rows"].append({"model": name, "swd": laplacian_swd(res.samples, ref), "seconds": seconds,
                            "laplacian_energy": laplacian_energy(res.samples) / laplacian_energy(ref)})
        print(rec["rows"][-1], flush=True)
        save_image_grid(res.samples[:32], Path(args.img) / f"sr_rgb_{name.replace(' ', '_')}.png", nrow=8)
    rec["minutes"] = {str(r): last_log(r).get("elapsed_s", math.nan) / 60
                      for r in (base_run, up_run, single_run)}
    rec["train_steps"] = {str(r): last_log(r).get("step") for r in (base_run, up_run, single_run)}
    write_json(Path(args.raw) / "super_resolution_rgb_cascade.json", rec)


def mosaic(args: argparse.Namespace, side: int, cell: int) -> torch.Tensor:
    """A side x side image of held-out digits shrunk to cell x cell, row by row (cropped to `side`)."""
    test = load_dataset(args.data, "test")
    k = -(-side // cell)
    small = resize_images(test.x[torch.arange(k * k) % len(test)], cell)  # cycled: the split may hold fewer
    rows = [torch.cat(list(small[r * k:(r + 1) * k]), dim=-1) for r in range(k)]
    return torch.cat(rows, dim=-2)[None, :, :side, :side]


def cmd_tiled(args: argparse.Namespace) -> None:
    """Upscale a 256x256 mosaic 4x in tiles, in child processes; their peak resident memory."""
    pipe = diffusa.load(run_dir(args, "sr4"))
    source = pipe.image_condition
    cell = pipe.data_shape[-1] // source.factor
    image = Path(args.runs) / "tiled_input.safetensors"
    save_tensors(image, {"image": mosaic(args, args.tiled_size, cell)})  # safetensors: nothing is unpickled
    child = [sys.executable, str(Path(__file__).resolve()), "tiled-child", "--runs", args.runs,
             "--tiled-steps", str(args.tiled_steps), "--raw", args.raw]
    peaks = {}
    for mode in ("load", "upscale"):
        proc = subprocess.run([*child, "--child-mode", mode], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"tiled child ({mode}) failed: {proc.stderr[-2000:]}")
        peaks[mode] = json.loads(proc.stdout.splitlines()[-1])
    rec = {"input": args.tiled_size, "output": args.tiled_size * source.factor, "steps": args.tiled_steps, **peaks}
    print(rec, flush=True)
    write_json(Path(args.raw) / "super_resolution_tiled.json", rec)


def cmd_tiled_child(args: argparse.Namespace) -> None:
    """In a child process: load the 4x model (mode load), or load it and upscale the mosaic (mode upscale)."""
    pipe = diffusa.load(run_dir(args, "sr4"))
    out: dict = {"mode": args.child_mode}
    if args.child_mode == "upscale":
        image = load_tensors(Path(args.runs) / "tiled_input.safetensors")["image"]
        t0 = time.time()
        res = pipe.upscale(image, steps=args.tiled_steps, seed=0)
        out.update({"seconds": time.time() - t0, "tiles": res.settings["tiles"], "nfe": res.settings["nfe"],
                    "output_size": res.settings["output_size"], "finite": bool(torch.isfinite(res.samples).all())})
    out["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB, the process's whole life
    print(json.dumps(out))


# -- report -------------------------------------------------------------------------------------------------------
def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _f(v: float | None, fmt: str) -> str:
    return NOT_MEASURED if v is None else format(v, fmt)


def report_lines(raw: Path) -> list[str]:
    """The result tables from the raw records; "not yet measured" where a stage has not run."""
    ev, ca, ti = (_load(raw / f"super_resolution_{k}.json") for k in ("eval", "cascade", "tiled"))
    lines = ["**Upscalers on held-out digits** (`eval`):", "",
             "| upscaler | method | PSNR (dB) | SSIM | FD | judge accuracy | consistency MSE |",
             "|---|---|---|---|---|---|---|"]
    if ev is None:
        lines.append(f"| 7->28 (4x), 14->28 (2x) | diffusion, bicubic | {' | '.join([NOT_MEASURED] * 5)} |")
    else:
        for row in ev["upscalers"]:
            h, f = row["input"][0], row["factor"]
            for method in ("diffusion", "bicubic"):
                m = row[method]
                which = (f"{h}->{h * f} ({f}x), {row['run']}" + (f", {row['sampler']}" if "sampler" in row else "")
                         + f", level {row['noise_level']:g}")
                lines.append(f"| {which} | {method} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['fd']:.1f} | "
                             f"{m['accuracy']:.3f} | {m['consistency_mse']:.4f} |")
        real = ev["real"]["accuracy"]
        lines += ["", f"The judge's accuracy on the real digits: {real:.3f} (n = {ev['n']}); the 4x "
                      "upscaler's accuracy / that: "
                  + ", ".join(f"{r['diffusion']['accuracy'] / real:.3f}" for r in ev["upscalers"] if r["factor"] == 4)
                  + " (target >= 0.95)."]
    lines += ["", "**Cascade** (`cascade`; base14 + 2x upscaler, against a single 28x28 model trained for the "
                  "same minutes):", "", "| model | augmentation | sampling level | FD | judge accuracy |",
              "|---|---|---|---|---|"]
    if ca is None:
        for model in ("cascade, augmented", "cascade, not augmented", "single stage 28x28"):
            lines.append(f"| {model} | | | {NOT_MEASURED} | {NOT_MEASURED} |")
    else:
        for r in ca["rows"]:
            aug = "" if r["augmented"] is None else ("yes" if r["augmented"] else "no")
            level = "" if r["noise_level"] is None else f"{r['noise_level']:g}"
            lines.append(f"| {r['model']} | {aug} | {level} | {r['fd']:.1f} | {r['accuracy']:.3f} |")
        mins = ca["minutes"]
        lines += ["", "Training minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in mins.items()) + "."]
    rs = _load(raw / "super_resolution_residual.json")
    lines += ["", "**Predicting around the input on digits** (`residual`: 4x upscalers at equal steps, held-out "
              "digits):", "", "| upscaler | training (steps, minutes) | PSNR (dB) | SSIM | FD | judge accuracy | "
              "consistency MSE |", "|---|---|---|---|---|---|---|"]
    if rs is None:
        lines.append(f"| sr4, sr4_res, sr4_res_edm | | {' | '.join([NOT_MEASURED] * 5)} |")
    else:
        for r in rs["upscalers"]:
            m = r["diffusion"]
            how = (f"{r['name']}: {r['process']}{', residual' if r['residual'] else ''}"
                   f"{', sigma_data ' + format(r['sigma_data'], 'g') if r['sigma_data'] else ''}, augmentation "
                   f"{r['cond_noise_max']:g}; {r['sampler']}")
            lines.append(f"| {how} | {r['train_steps']} ({r['train_minutes']:.1f}) | {m['psnr']:.2f} | "
                         f"{m['ssim']:.3f} | {m['fd']:.1f} | {m['accuracy']:.3f} | {m['consistency_mse']:.4f} |")
        m = rs["upscalers"][0]["bicubic"]
        lines.append(f"| bicubic | | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['fd']:.1f} | {m['accuracy']:.3f} | "
                     f"{m['consistency_mse']:.4f} |")
        lines.append(f"| real digits (n = {rs['n']}) | | | | | {rs['real']['accuracy']:.3f} | |")
    rgb = _load(raw / "super_resolution_rgb.json")
    lines += ["", "**A folder of RGB images** (`rgb`: synthetic scenes, 16 -> 64 (4x), held-out ones; SWD: sliced "
              "Wasserstein distance x 1e3 of 7x7 neighbourhoods per Laplacian level, finest first, to other real "
              "scenes; detail: mean squared Laplacian / the originals'; x0 error: the denoiser's MSE on the scenes "
              f"noised to t = {', '.join(f'{t:g}' for t in PROBE_TIMES)}, given the clean condition):", "",
              "| upscaler | PSNR (dB) | SSIM | SWD per level | detail | consistency MSE | x0 error by t |",
              "|---|---|---|---|---|---|---|"]
    if rgb is None:
        lines.append(f"| 16->64 (4x), RGB, diffusion and bicubic | {' | '.join([NOT_MEASURED] * 6)} |")
    else:
        real = rgb["real"]

        def cells(m: dict) -> str:
            return (f"{m['psnr']:.2f} | {m['ssim']:.3f} | {' / '.join(f'{v:.0f}' for v in m['swd'])} | "
                    f"{m['laplacian_energy'] / real['laplacian_energy']:.2f} | {m['consistency_mse']:.4f} | "
                    f"{' / '.join(f'{v:.3f}' for v in m['x0_errors'])}")

        for r in rgb["runs"]:
            how = f"{r['process']} {r['prediction']}{', residual' if r['residual'] else ''}, " if "process" in r else ""
            lines.append(f"| {r['run']}: {how}patch {r['patch_size']}, weighting {r['weighting']}, {r['train_steps']} "
                         f"steps ({r['train_minutes']:.1f} min){', from ' + r['init'] if r.get('init') else ''}; "
                         f"{r['sampler']} {rgb['steps']} | {cells(r)} |")
        lines.append(f"| bicubic (x0 error: of the upscaled input itself) | {cells(rgb['bicubic'])} |")
        lines.append(f"| real scenes (n = {rgb['n']}) | | | {' / '.join(f'{v:.0f}' for v in real['swd'])} | 1.00 | | |")
    rc = _load(raw / "super_resolution_rgb_cascade.json")
    lines += ["", "**Cascade at 64x64 RGB** (`rgb-cascade`: a 16x16 base + the 4x upscaler against one 64x64 model "
              "trained for the minutes of both; SWD to held-out scenes, finest level first):", "",
              "| model | training (steps, minutes) | SWD per level | detail | sampling s |", "|---|---|---|---|---|"]
    if rc is None:
        lines.append(f"| cascade, single stage | | {NOT_MEASURED} | | |")
    else:
        runs_ = list(rc["minutes"])
        trained = {"cascade": " + ".join(f"{rc['train_steps'][r]} ({rc['minutes'][r]:.1f})" for r in runs_[:2]),
                   "single stage": f"{rc['train_steps'][runs_[2]]} ({rc['minutes'][runs_[2]]:.1f})"}
        for r in rc["rows"]:
            lines.append(f"| {r['model']} | {trained[r['model']]} | {' / '.join(f'{v:.0f}' for v in r['swd'])} | "
                         f"{r['laplacian_energy']:.2f} | {r['seconds']:.0f} |")
        lines.append(f"| real scenes (n = {rc['n']}) | | {' / '.join(f'{v:.0f}' for v in rc['real'])} | 1.00 | |")
    lines += ["", "**Tiled upscale** (`tiled`):", "", "| input -> output | steps | tiles | seconds | peak RSS, "
              "model loaded | peak RSS, upscaling |", "|---|---|---|---|---|---|"]
    if ti is None:
        lines.append(f"| 256 -> 1024 | | | {NOT_MEASURED} | {NOT_MEASURED} | {NOT_MEASURED} |")
    else:
        up = ti["upscale"]
        lines.append(f"| {ti['input']} -> {ti['output']} | {ti['steps']} | {up['tiles']} | {up['seconds']:.0f} | "
                     f"{ti['load']['peak_kib'] / 2**20:.2f} GiB | {up['peak_kib'] / 2**20:.2f} GiB |")
    return lines


def cmd_report(args: argparse.Namespace) -> None:
    lines = report_lines(Path(args.raw))
    emit(lines, args.out)
    if args.doc:  # fill the marked section of the docs page
        doc = Path(args.doc)
        text = doc.read_text()
        if DOC_START not in text or DOC_END not in text:
            raise DiffusaError(f"{doc} has no section between {DOC_START} and {DOC_END} to fill")
        head, rest = text.split(DOC_START, 1)
        doc.write_text(head + DOC_START + "\n" + "\n".join(lines) + "\n" + DOC_END + rest.split(DOC_END, 1)[1])


def main() -> None:
    ap = stage_parser(__doc__, ["train", "eval", "residual", "cascade", "tiled", "rgb", "rgb-cascade", "report",
                                  "tiled-child"])
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--runs", default="runs/sr")
    ap.add_argument("--base-size", type=int, default=14, help="the base model's image size")
    ap.add_argument("--steps", type=int, default=1200, help="training steps of each upscaler")
    ap.add_argument("--base-steps", type=int, default=2400, help="training steps of the 14x14 base model")
    ap.add_argument("--single-steps", type=int, default=3000, help="the single-stage model's step ceiling")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="train: minutes of the cascade (base14 + one upscaler) and of single28, each run's steps "
                         "fitted to its share (0: the step options)")
    ap.add_argument("--base-share", type=float, default=0.4, help="train --budget: base14's share of the minutes")
    ap.add_argument("--only", help="train: only these runs, comma-separated (e.g. base14,sr2,single28)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--sampler", default=None, help="eval: the upscalers' sampler (default: each run's recommended)")
    ap.add_argument("--noise-level", type=float, default=None,
                    help="eval: the condition's noise level (default: each run's own sampling level)")
    ap.add_argument("--use", type=use_pair, action="append", default=[],
                    metavar="NAME=RUN", help="take run NAME (sr4, sr2, ...) from RUN, e.g. sr4=mnist-sr")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3],
                    help="cascade: sampling levels of the augmented upscaler")
    ap.add_argument("--tiled-size", type=int, default=256)
    ap.add_argument("--tiled-steps", type=int, default=10)
    ap.add_argument("--rgb-run", nargs="+", default=["runs/scenes-sr4"],
                    help="rgb: 4x RGB upscalers to measure (the first trained if missing); rgb-cascade: the first")
    ap.add_argument("--rgb-steps", type=int, default=6000, help="rgb: its training steps, if trained here")
    ap.add_argument("--rgb-base-steps", type=int, default=6000, help="rgb-cascade: the 16x16 base model's steps")
    ap.add_argument("--rgb-single-steps", type=int, default=8000,
                    help="rgb-cascade: the single-stage 64x64 model's step ceiling (its minutes: base + upscaler)")
    ap.add_argument("--rgb-scenes", type=int, default=5000, help="rgb: scenes in its training folder")
    ap.add_argument("--rgb-size", type=int, default=64, help="rgb: the scenes' size")
    ap.add_argument("--doc", help="report: also fill the marked results section of this page")
    ap.add_argument("--child-mode", choices=["load", "upscale"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    stages = {"train": cmd_train, "eval": cmd_eval, "residual": cmd_residual, "cascade": cmd_cascade,
              "tiled": cmd_tiled, "rgb": cmd_rgb,
              "rgb-cascade": cmd_rgb_cascade, "report": cmd_report}
    if args.stage == "tiled-child":
        cmd_tiled_child(args)
        return
    run_stages(ap, args, stages, quick)


def quick(args: argparse.Namespace) -> None:
    """8x8 digits: upscalers 2->8 and 4->8, a 4x4 base model, 3 training steps, tiny networks, 20 digits,
    a 16 -> 64 tiled upscale, in ./quick."""
    args.data, args.runs, args.raw, args.img = "digits", "quick/runs", "quick/raw", "quick/img"
    args.steps = args.base_steps = args.single_steps = 3
    args.n, args.sample_steps, args.levels, args.tiled_size, args.tiled_steps = 20, 3, [0.0, 0.1], 16, 2
    args.base_size = 4  # 8x8 digits: a 4x4 base, upscaled 2x
    args.rgb_run, args.rgb_steps, args.rgb_scenes, args.rgb_size = ["quick/runs/rgb"], 3, 16, 16  # 4 -> 16 RGB
    args.rgb_base_steps = args.rgb_single_steps = 3
    args.set = [*args.set, "model.net.channels=8", "train.warmup=1"]


if __name__ == "__main__":
    main()
