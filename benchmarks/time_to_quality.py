"""Time to quality: Frechet distance after 5, 10 and 20 minutes of training on mnist5k, diffusa's default
configuration against diffusers' example configuration, on the same data and machine.

    python benchmarks/time_to_quality.py [--minutes 5 10 20] [--n 500] [--quick] [--out FILE.md]

diffusers' side follows its `train_unconditional.py` example (the defaults of that script): UNet2DModel
with block channels 32/64/64 for 28x28 digits (1.11M parameters, one layer per block, attention in the
middle block), DDPMScheduler with 1,000 linear betas and epsilon prediction, AdamW lr 1e-4, betas
(0.95, 0.999), weight decay 1e-6, cosine schedule with 500 warm-up steps, batch 16, EMA with
inv_gamma 1, power 3/4, max decay 0.9999. diffusa's side is `diffusa train --data mnist5k` with the
step count stretched to the longest budget.

Minutes are turned into step counts from each side's own seconds per step, measured first in this process
(alternating the two, medians), so that other load on the machine during the long runs changes neither
side's step count. Each side trains once for the longest budget (its schedules planned for that length)
and its EMA weights are scored at each budget's step: 500 samples with 50 DDIM steps (diffusers: its
DDIMScheduler; diffusa: its DDIM sampler), Frechet distance in the digit classifier's feature space
against the held-out split, with the real-vs-real floor at the same size.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _tables import emit

from diffusa.config import load_config
from diffusa.data import batches, load_dataset
from diffusa.engine import Engine
from diffusa.metrics import classify, confidence_stats, frechet_distance
from diffusa.samplers import sample
from diffusa.train import diffusion_engine
from diffusa.viz import save_image_grid

PEER_BATCH = 16


class DiffusersExample:
    """diffusers' train_unconditional.py loop on resident mnist5k tensors (its defaults, 28x28 network)."""

    def __init__(self, x: torch.Tensor, total_steps: int, seed: int = 0) -> None:
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        torch.manual_seed(seed)
        self.x = x
        self.model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 64, 64),
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
        self.ema = EMAModel(self.model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                                     eps=1e-8)
        self.lr = get_cosine_schedule_with_warmup(self.opt, num_warmup_steps=500, num_training_steps=total_steps)
        self.batches = batches(len(x), PEER_BATCH, seed)
        self.g = torch.Generator().manual_seed(seed)
        self.step = 0

    def train_step(self) -> None:
        x0 = self.x[next(self.batches)]
        noise = torch.randn(x0.shape, generator=self.g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=self.g)
        pred = self.model(self.scheduler.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.lr.step()
        self.opt.zero_grad()
        self.ema.step(self.model.parameters())
        self.step += 1

    def ema_model(self) -> torch.nn.Module:
        m = copy.deepcopy(self.model)
        self.ema.copy_to(m.parameters())
        return m.eval()


@torch.inference_mode()
def diffusers_samples(model: torch.nn.Module, n: int, steps: int, seed: int = 0, batch: int = 100) -> torch.Tensor:
    """DDIMPipeline's loop (eta 0, clipping as the training scheduler configures it) with a fixed seed."""
    from diffusers import DDIMScheduler, DDPMScheduler

    sched = DDIMScheduler.from_config(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").config)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        x = torch.randn(min(batch, n - i), 1, 28, 28, generator=g)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            x = sched.step(model(x, t).sample, t, x).prev_sample
        out.append(x)
    return torch.cat(out).clamp(-1, 1)


def diffusa_trainer(steps: int, out: Path) -> Engine:
    cfg = load_config(overrides=["data.name='mnist5k'", f"train.steps={steps}", "train.sample_every=0",
                                 "train.checkpoint_every=0", "train.log_every=100"])
    return diffusion_engine(cfg, out, progress=False)


def seconds_per_step(step_fns: dict[str, object], rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per training step of each side, alternating the sides round by round."""
    for fn in step_fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in step_fns}
    for _ in range(rounds):
        for name, fn in step_fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def score(x: torch.Tensor, ref_feats: torch.Tensor, grid: Path | None = None) -> dict[str, float]:
    if grid is not None:
        save_image_grid(x[:64], grid)
    feats, probs = classify(x)
    return {"fd": frechet_distance(feats, ref_feats), "confident": confidence_stats(probs)["confident_share"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20])
    ap.add_argument("--n", type=int, default=500, help="samples per score")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="seconds-long check that the script runs")
    ap.add_argument("--out")
    ap.add_argument("--json", help="also write every measured number here")
    ap.add_argument("--seconds-per-step", nargs=2, type=float, metavar=("DIFFUSERS", "DIFFUSA"),
                    help="skip the measurement and use these (measured earlier on a quiet machine)")
    ap.add_argument("--calibrate-only", action="store_true", help="print seconds per step and stop")
    ap.add_argument("--side", choices=["both", "diffusers", "diffusa"], default="both",
                    help="train one side only (two processes can then run at once) and write --json")
    ap.add_argument("--report", nargs="+", metavar="JSON", help="only print the table from --json files")
    ap.add_argument("--grids", help="also save 64 of each scored sample set as a PNG grid in this folder")
    args = ap.parse_args()
    if args.report:
        report([json.loads(Path(f).read_text()) for f in args.report], args.out)
        return
    if args.quick:
        args.minutes, args.n, args.sample_steps = [0.02, 0.04], 20, 3
    budgets = sorted(args.minutes)
    train = load_dataset("mnist5k", "train")
    test = load_dataset("mnist5k", "test")
    ref_feats, _ = classify(test.x)
    floor_feats, _ = classify(train.x[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
                                      [:args.n]])
    floor = frechet_distance(floor_feats, ref_feats)
    tmp = Path(tempfile.mkdtemp(prefix="ttq-"))

    # 1. seconds per step, both sides on this machine now (or as measured earlier)
    if args.seconds_per_step:
        sps = dict(zip(("diffusers", "diffusa"), args.seconds_per_step, strict=True))
    else:
        calib_peer = DiffusersExample(train.x, 1000)
        calib_mine = diffusa_trainer(1000, tmp / "calib")
        calib_mine.start_data()
        rounds, per = (1, 1) if args.quick else (5, 3)
        sps = seconds_per_step({"diffusers": calib_peer.train_step, "diffusa": calib_mine.train_step}, rounds, per)
        del calib_peer, calib_mine
    if args.calibrate_only:
        print(json.dumps({"seconds_per_step": sps}))
        return
    plan = {side: [max(1, round(m * 60 / sps[side])) for m in budgets] for side in sps}
    if args.quick:  # two distinct budgets however loaded the machine is
        plan = {side: [2, 4] for side in sps}
    print(json.dumps({"seconds_per_step": sps, "steps": plan}), flush=True)

    results: dict[str, list[dict[str, float]]] = {"diffusers": [], "diffusa": []}
    if args.side in ("both", "diffusers"):
        run_diffusers(train.x, plan["diffusers"], args, ref_feats, results)
    if args.side in ("both", "diffusa"):
        run_diffusa(plan["diffusa"], args, ref_feats, results, tmp)
    record = {"seconds_per_step": sps, "plan": plan, "floor": floor, "budgets_min": budgets, "n": args.n,
              "sample_steps": args.sample_steps, **{k: v for k, v in results.items() if v}}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if args.side == "both":
        report([record], args.out)


def run_diffusers(x: torch.Tensor, plan: list[int], args: argparse.Namespace, ref_feats: torch.Tensor,
                  results: dict[str, list[dict[str, float]]]) -> None:
    """diffusers' example, one run to the longest budget, its EMA scored at each budget."""
    peer = DiffusersExample(x, plan[-1])
    start = time.time()
    while peer.step < plan[-1]:
        peer.train_step()
        if peer.step in plan:
            wall = time.time() - start
            grid = Path(args.grids) / f"diffusers_step{peer.step}.png" if args.grids else None
            rec = {"step": peer.step, "wall_s": wall,
                   **score(diffusers_samples(peer.ema_model(), args.n, args.sample_steps), ref_feats, grid)}
            results["diffusers"].append(rec)
            print(json.dumps({"side": "diffusers", **rec}), flush=True)
            start += time.time() - start - wall  # scoring is not training time


def run_diffusa(plan: list[int], args: argparse.Namespace, ref_feats: torch.Tensor,
                results: dict[str, list[dict[str, float]]], tmp: Path) -> None:
    """diffusa's default configuration, one run to the longest budget, its EMA scored at each budget."""
    mine = diffusa_trainer(plan[-1], tmp / "diffusa")
    start = time.time()

    def snapshot(tr: Engine) -> None:
        nonlocal start
        if tr.step in plan:
            wall = time.time() - start
            g = torch.Generator().manual_seed(0)
            x = sample(tr.task.ema_denoiser, (args.n, 1, 28, 28), "ddim", args.sample_steps, generator=g)
            grid = Path(args.grids) / f"diffusa_step{tr.step}.png" if args.grids else None
            rec = {"step": tr.step, "wall_s": wall, **score(x, ref_feats, grid)}
            results["diffusa"].append(rec)
            print(json.dumps({"side": "diffusa", **rec}), flush=True)
            start += time.time() - start - wall  # scoring is not training time

    mine.fit(on_step=snapshot)


def report(records: list[dict], out: str | None) -> None:
    """The table from one record holding both sides, or one record per side."""
    rec = {k: v for r in records for k, v in r.items()}
    sps, budgets = rec["seconds_per_step"], rec["budgets_min"]
    lines = [f"mnist5k, {rec['n']} samples per score (DDIM {rec['sample_steps']} steps), FD in the digit "
             f"classifier's features against the held-out split; real-vs-real floor {rec['floor']:.1f}. Minutes are "
             f"steps x seconds per step measured on the quiet machine: diffusa {sps['diffusa']:.3f} s (batch 64), "
             f"diffusers {sps['diffusers']:.3f} s (batch {PEER_BATCH}).", "",
             "| training minutes | diffusers steps | diffusers FD | diffusers confident | diffusa steps | diffusa FD "
             "| diffusa confident | FD ratio diffusa/diffusers | target <= 0.7 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, p, d in zip(budgets, rec["diffusers"], rec["diffusa"], strict=True):
        ratio = d["fd"] / p["fd"]
        lines.append(f"| {m:g} | {p['step']} | {p['fd']:.1f} | {p['confident']:.1%} | {d['step']} | {d['fd']:.1f} "
                     f"| {d['confident']:.1%} | {ratio:.3f} | {'met' if ratio <= 0.7 else 'missed'} |")
    emit(lines, out)


if __name__ == "__main__":
    main()
