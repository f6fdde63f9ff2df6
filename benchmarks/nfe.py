"""Quality against network evaluations: Frechet distance at NFE 5..250 for every sampler on one trained model per
family, side by side with diffusers' schedulers driving the same eps model in the same process.

    python benchmarks/nfe.py train [--families vp edm flow] [--steps 800]
    python benchmarks/nfe.py eval  [--families ddpm vp edm flow] [--n 128]
    python benchmarks/nfe.py report [--out docs/results/nfe.md]

Families: ddpm is the discrete cosine chain with eps-prediction and L_simple (the reproduction's run b,
benchmarks/iddpm_repro.py, --ddpm-run); vp, edm and flow are `diffusa train --process X` with each process's
default objective. All four use the same U-Net, batch 64, lr 1e-3 and the same number of steps.

NFE is counted, not assumed: a forward hook counts the network's calls, each sampler's steps are chosen as the
largest count whose NFE fits the target (Heun and the predictor-corrector sampler spend two per step, RK4 four),
and the table reports the NFE actually used. rk45 picks its own steps (rtol = atol = 1e-3). Every sampler runs
at NFE 5, 10 and 20 (--short-max) and at 50, 100 and 250 (--long names the samplers that do; default all),
on its default grid, and on the grids --spacings names (uniform, logsnr, karras: `diffusa sample --spacing`).
diffusers' DDIMScheduler, DPMSolverMultistepScheduler (DPM-Solver++ 2M), EulerDiscreteScheduler and
HeunDiscreteScheduler drive the ddpm model's eps at every NFE with their default timestep spacing, and up to NFE
20 with "trailing" (DPM-Solver++ also with dynamic thresholding of x0 to [-1, 1], diffusers' analogue of the
x0 clipping diffusa's samplers apply to images). Every sample set starts
from the same seed; FD and KID are in the digit classifier's features against the held-out split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from _tables import emit, run_stages, stage_parser, write_json

from diffusa.config import load_config
from diffusa.data import load_dataset
from diffusa.metrics import classify, frechet_distance, kernel_inception_distance
from diffusa.pipelines.sampling import network_calls
from diffusa.runs import load_run
from diffusa.samplers import KARRAS_DEFAULT, LEVEL_SPACINGS, sample
from diffusa.train import diffusion_engine
from diffusa.viz import save_image_grid

os.environ.setdefault("MPLCONFIGDIR", str(Path(__file__).resolve().parent.parent / ".cache" / "matplotlib"))

FAMILIES = ["ddpm", "edm", "flow", "vp"]
SAMPLERS = ["ddim", "ancestral", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m", "euler_maruyama",
            "reverse_diffusion", "pc", "ode_euler", "ode_heun", "rk4", "dpmpp_2m_sde"]
LONG = SAMPLERS  # also at NFE 50, 100 and 250
NFES = [5, 10, 20, 50, 100, 250]
RK45_TOLS = [1e-3]  # rtol = atol
PEERS = ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler"]
PEERS_LONG = PEERS  # also at NFE 50, 100 and 250, default spacing


def nfe_of(run, sampler: str, steps: int, spacing: str | None = None) -> int:
    """The network evaluations `steps` steps of `sampler` spend (one example; `network_calls` counts them)."""
    with network_calls(run.denoiser.net) as calls:
        sample(run.denoiser, (1, *run.data_shape), sampler, steps, generator=torch.Generator().manual_seed(0),
               spacing=spacing)
    return calls[0]


def steps_for(run, sampler: str, target: int, spacing: str | None = None) -> tuple[int, int]:
    """The largest step count whose NFE is at most `target` (at least one step), and that NFE."""
    a, b = nfe_of(run, sampler, 4, spacing), nfe_of(run, sampler, 8, spacing)
    per = (b - a) / 4
    base = a - 4 * per
    steps = max(1, int((target - base) // per))
    while steps > 1 and base + per * steps > target:
        steps -= 1
    return steps, int(base + per * steps)


def cmd_train(args: argparse.Namespace) -> None:
    for fam in args.families:
        out = run_path(args, fam)
        state = out / "train_state.json"
        if state.exists() and json.loads(state.read_text())["step"] >= args.steps:
            print(f"{fam}: already trained ({out})", flush=True)
            continue
        # ddpm: the reproduction's run b (eps, cosine, L_simple), trained here only if it is missing
        paper = ["model.prediction='eps'", "loss.weighting='none'"] if fam == "ddpm" else []
        cfg = load_config(overrides=["data.name='mnist5k'", f"process.name='{fam}'", f"train.steps={args.steps}",
                                     "train.sample_every=0", "train.checkpoint_every=200", "train.log_every=25",
                                     *paper, *args.set])
        if (out / "config.json").exists() and not state.exists():  # stopped before its first checkpoint
            shutil.rmtree(out)
        t0 = time.time()
        diffusion_engine(cfg, out, progress=False, resume=state.exists()).fit()
        print(json.dumps({"family": fam, "steps": args.steps, "seconds": time.time() - t0}), flush=True)


def run_path(args: argparse.Namespace, fam: str) -> Path:
    return Path(args.ddpm_run) if fam == "ddpm" else Path(args.root) / fam


def peer_samples(run, scheduler: str, steps: int, n: int, spacing: str | None, seed: int = 0) -> torch.Tensor:
    """diffusers' scheduler loop driving the run's eps network (timestep k is diffusa's t = (k + 1) / T)."""
    import diffusers

    T = run.denoiser.process.num_steps
    kw = {"num_train_timesteps": T, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"}
    if spacing == "thresholding":  # x0 clipped to [-1, 1] by dynamic thresholding, as diffusa's clip_x0 does
        kw.update(thresholding=True, sample_max_value=1.0)
    elif spacing:
        kw["timestep_spacing"] = spacing
    sched = getattr(diffusers, scheduler)(**kw)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *run.data_shape), generator=g) * sched.init_noise_sigma
    with torch.no_grad():
        for k in sched.timesteps:
            t = torch.full((n,), (float(k) + 1) / T, dtype=torch.float64)
            eps = run.denoiser.raw(sched.scale_model_input(x, k), t, None)
            x = sched.step(eps, k, x).prev_sample
    return x.clamp(-1, 1)


def cmd_eval(args: argparse.Namespace) -> None:
    test = load_dataset("mnist5k", "test")
    train = load_dataset("mnist5k", "train")
    ref, _ = classify(test.x)
    floor_feats, _ = classify(train.x[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.n]])
    floor = {"fd": frechet_distance(floor_feats, ref), "kid": kernel_inception_distance(floor_feats, ref,
                                                                                        subset_size=args.n)[0]}
    grids = Path(args.root) / "grids"

    def score(x: torch.Tensor, name: str, seconds: float, nfe: int) -> dict:
        feats, _ = classify(x)
        save_image_grid(x[:64], grids / f"{name}.png")
        return {"fd": frechet_distance(feats, ref), "kid": kernel_inception_distance(feats, ref, subset_size=args.n)[0],
                "nfe": nfe, "seconds": seconds}

    for fam in args.families:
        path = Path(args.raw) / f"nfe_{fam}.json"
        rec = json.loads(path.read_text()) if path.exists() else {"family": fam, "diffusa": {}, "diffusers": {}}
        rec["floor"], rec["n"] = floor, args.n
        run = load_run(run_path(args, fam))
        jobs: list[tuple[str, int, str | None, dict]] = []
        for s in args.samplers:
            other = [sp for sp in args.spacings if not (sp == "karras" and s in KARRAS_DEFAULT)]  # no repeats
            jobs += [(s, nfe, sp, {}) for sp in (None, *other) for nfe in args.nfe
                     if nfe <= args.short_max or s in args.long]
        jobs += [("rk45", 0, None, {"rtol": tol, "atol": tol}) for tol in ([1e-2] if args.quick else RK45_TOLS)]
        for s, target, spacing, opts in jobs:
            name = f"{s}/{spacing}" if spacing else s  # a grid other than the sampler's default
            key = f"{name}@{target}" if s != "rk45" else f"rk45@tol{opts['rtol']:g}"
            if key in rec["diffusa"]:
                continue
            steps = steps_for(run, s, target, spacing)[0] if s != "rk45" else 2
            g = torch.Generator().manual_seed(0)
            t0 = time.time()
            with network_calls(run.denoiser.net) as calls:  # one batch: one call per network evaluation
                x = sample(run.denoiser, (args.n, *run.data_shape), s, steps, generator=g, spacing=spacing, **opts)
            nfe = calls[0]
            rec["diffusa"][key] = {"sampler": s, "target": target, "steps": steps, **({"spacing": spacing} if spacing
                                                                                        else {}),
                                   **score(x, f"{fam}_{name.replace('/', '_')}_{target or opts['rtol']}",
                                           time.time() - t0, nfe)}
            write_json(path, rec)
            print(json.dumps({"family": fam, "key": key, **rec["diffusa"][key]}), flush=True)
        if fam != "ddpm":
            continue
        for peer in args.peers:
            for spacing in (None, "trailing", "thresholding")[:3 if peer == "DPMSolverMultistepScheduler" else 2]:
                heun = peer == "HeunDiscreteScheduler"
                for target in args.nfe:
                    if target > args.short_max and (spacing or peer not in PEERS_LONG):
                        continue
                    key = f"{peer}/{spacing or 'default'}@{target}"
                    if key in rec["diffusers"]:
                        continue
                    steps = max(1, (target + 1) // 2) if heun else target  # Heun: 2 steps - 1 evaluations
                    nfe = 2 * steps - 1 if heun else steps
                    t0 = time.time()
                    x = peer_samples(run, peer, steps, args.n, spacing)
                    rec["diffusers"][key] = {"scheduler": peer, "spacing": spacing or "default", "target": target,
                                             "steps": steps, **score(x, f"diffusers_{peer}_{spacing}_{target}",
                                                                      time.time() - t0, nfe)}
                    write_json(path, rec)
                    print(json.dumps({"family": fam, "key": key, **rec["diffusers"][key]}), flush=True)


def label(cell: dict) -> str:
    """A diffusa cell's row: the sampler, and its grid when not the default one."""
    return f"{cell['sampler']} ({cell['spacing']} grid)" if cell.get("spacing") else cell["sampler"]


def best(entries: dict, max_nfe: int | None = None) -> tuple[str, dict] | None:
    pool = [(k, v) for k, v in entries.items() if max_nfe is None or v["nfe"] <= max_nfe]
    return min(pool, key=lambda kv: kv[1]["fd"]) if pool else None


def cmd_report(args: argparse.Namespace) -> None:
    from diffusa.viz import _plt

    plt = _plt()
    recs = {f: json.loads((Path(args.raw) / f"nfe_{f}.json").read_text()) for f in FAMILIES
            if (Path(args.raw) / f"nfe_{f}.json").exists()}
    if not recs:
        raise SystemExit("no records: run `nfe.py eval` first")
    any_rec = next(iter(recs.values()))
    lines = [f"mnist5k, {any_rec['n']} samples per cell from one seed, FD in the digit classifier's features against "
             f"the held-out split; real-vs-real floor {any_rec['floor']['fd']:.1f}. Cells: FD (NFE actually used).", ""]
    targets = sorted({v["target"] for r in recs.values() for part in ("diffusa", "diffusers")
                      for v in r.get(part, {}).values() if v["target"] > 0})
    for fam, rec in recs.items():
        lines += [f"**{fam}**", "", "| sampler | " + " | ".join(f"NFE {t}" for t in targets) + " |",
                  "|---|" + "---|" * len(targets)]
        rows: dict[str, dict[int, dict]] = {}
        for v in rec["diffusa"].values():
            if v["sampler"] != "rk45":
                rows.setdefault(label(v), {})[v["target"]] = v
        for name, cells in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{cells[t]['fd']:.1f} ({cells[t]['nfe']})" if t in cells else "–"
                                                      for t in targets) + " |")
        for k, v in rec["diffusa"].items():
            if v["sampler"] == "rk45":
                cells = f"FD {v['fd']:.1f} at NFE {v['nfe']} |" + " |" * (len(targets) - 1)
                lines.append(f"| {k.replace('@', ' ')} | {cells}")
        peers: dict[str, dict[int, dict]] = {}
        for v in rec.get("diffusers", {}).values():
            peers.setdefault(f"diffusers {v['scheduler']} ({v['spacing']})", {})[v["target"]] = v
        for name, cells in peers.items():
            lines.append(f"| {name} | " + " | ".join(f"{cells[t]['fd']:.1f} ({cells[t]['nfe']})" if t in cells else "–"
                                                      for t in targets) + " |")
        lines.append("")
    lines += ["**Targets** (best sampler at NFE <= 10 against the same model's best at any NFE, and against the best "
              "of diffusers' schedulers at NFE <= 10):", "",
              "| family | best at NFE <= 10 | FD | best at any NFE | FD | ratio (target <= 1.1) | best diffusers at "
              "NFE <= 10 | FD | ratio (target <= 1.0, aim 0.9) |", "|---|---|---|---|---|---|---|---|---|"]
    for fam, rec in recs.items():
        b10, ball = best(rec["diffusa"], 10), best(rec["diffusa"])
        p10 = best(rec.get("diffusers", {}), 10)
        peer = (f"{p10[0]} | {p10[1]['fd']:.1f} | {b10[1]['fd'] / p10[1]['fd']:.2f}" if p10 else "– | – | –")
        lines.append(f"| {fam} | {b10[0]} | {b10[1]['fd']:.1f} | {ball[0]} | {ball[1]['fd']:.1f} | "
                     f"{b10[1]['fd'] / ball[1]['fd']:.2f} | {peer} |")
    emit(lines, args.out)

    fig, axes = plt.subplots(1, len(recs), figsize=(4.2 * len(recs), 4), sharey=True, squeeze=False)
    for ax, (fam, rec) in zip(axes[0], recs.items(), strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for v in rec["diffusa"].values():
            if not v.get("spacing"):  # the figure keeps to each sampler's default grid; the table has the others
                series.setdefault(v["sampler"], []).append((v["nfe"], v["fd"]))
        for v in rec.get("diffusers", {}).values():
            series.setdefault(f"diffusers {v['scheduler'].replace('Scheduler', '')} {v['spacing']}", []).append(
                (v["nfe"], v["fd"]))
        for name, pts in series.items():
            pts.sort()
            style = {"ls": "--"} if name.startswith("diffusers") else {}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) > 1 else "*", ms=3, lw=1,
                    label=name, **style)
        ax.axhline(rec["floor"]["fd"], color="gray", lw=1, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="network evaluations", title=fam)
    axes[0][0].set_ylabel("Frechet distance")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, fontsize=6, loc="lower center", ncol=6)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    Path(args.img).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.img) / "nfe.png", dpi=120)
    print(f"wrote {Path(args.img) / 'nfe.png'}")


def main() -> None:
    ap = stage_parser(__doc__, ["train", "eval", "report"])
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--root", default="runs/nfe")
    ap.add_argument("--ddpm-run", default="runs/iddpm/b", help="the ddpm family's eps model")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--n", type=int, default=100, help="samples per cell")
    ap.add_argument("--nfe", type=int, nargs="+", default=NFES)
    ap.add_argument("--samplers", nargs="+", default=SAMPLERS)
    ap.add_argument("--spacings", nargs="*", default=[], choices=LEVEL_SPACINGS,
                    help="eval: also run every sampler on these grids (default: each sampler's own grid only)")
    ap.add_argument("--peers", nargs="*", default=PEERS, choices=PEERS,
                    help="diffusers' schedulers that drive the ddpm model (none: --peers alone)")
    ap.add_argument("--long", nargs="+", default=LONG, help="samplers also run at NFE > --short-max")
    ap.add_argument("--short-max", type=int, default=20, help="every sampler runs at the targets up to this NFE")
    args = ap.parse_args()
    run_stages(ap, args, {"train": cmd_train, "eval": cmd_eval, "report": cmd_report}, quick)


def quick(args: argparse.Namespace) -> None:
    """Two families, a 20-step chain, 2 training steps, 8 images, two NFE targets, in ./quick."""
    args.families, args.steps, args.n, args.nfe = ["ddpm", "flow"], 2, 8, [5, 8]
    args.samplers, args.long, args.spacings = ["ddim", "heun", "pc"], ["ddim"], ["karras"]
    args.root, args.raw, args.img = "quick/runs", "quick/raw", "quick/img"
    args.ddpm_run, args.set = "quick/runs/ddpm", ["process.num_steps=20", "train.sample_steps=4", "train.sample_n=8"]

if __name__ == "__main__":
    main()
