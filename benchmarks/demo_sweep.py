"""Quality against training steps for one mnist5k configuration: the sweep behind the demo's defaults.

    python benchmarks/demo_sweep.py NAME STEP,STEP,... [--set KEY=VALUE ...] [--data mnist5k]

Trains with the given overrides (the cosine schedule ends at the last listed step) and, at each listed
step, draws 500 EMA samples (DDIM, 50 steps, seed 0) and prints one JSON line: the share the digit
classifier recognises with p >= 0.9 ("conf") and the classes present. At the last step it also scores
ancestral 100/250 and DDIM 25/100. Runs on a GPU when there is one (quality per step does not depend on
the device; CPU seconds per step are measured separately, see docs/demo.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from diffusa.config import load_config
from diffusa.engine import Engine
from diffusa.metrics import classify, confidence_stats
from diffusa.samplers import sample
from diffusa.train import diffusion_engine


def score(trainer: Engine, sampler: str, steps: int, **opts: object) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = sample(trainer.task.ema_denoiser, (500, 1, 28, 28), sampler, steps, generator=g, device=trainer.device, **opts)
    st = confidence_stats(classify(x.cpu())[1])
    return {"conf": round(st["confident_share"], 3), "classes": st["classes_present"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("evals", help="comma-separated steps at which to score; the last is the run's length")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data", default="mnist5k")
    args = ap.parse_args()
    evals = [int(s) for s in args.evals.split(",")]
    out = Path(tempfile.mkdtemp(prefix=f"sweep-{args.name}-"))
    shutil.rmtree(out)
    cfg = load_config(overrides=[f"data.name={args.data!r}", f"train.steps={evals[-1]}", "train.sample_every=0",
                                 "train.checkpoint_every=0", *args.set])
    tr = diffusion_engine(cfg, out, progress=False)
    tr.start_data()
    start = time.time()
    while tr.step < evals[-1]:
        loss, _, _ = tr.train_step()
        if tr.step in evals:
            rec = {"exp": args.name, "step": tr.step, "wall_s": round(time.time() - start),
                   "loss": round(float(loss), 4), **score(tr, "ddim", 50)}
            if tr.step == evals[-1]:
                for sampler, k, opts in (("ancestral", 100, {}), ("ddim", 25, {}), ("ddim", 100, {}),
                                         ("ancestral", 250, {"variance": "beta"})):
                    rec[f"{sampler}{k}{opts.get('variance', '')}"] = score(tr, sampler, k, **opts)["conf"]
            print(json.dumps(rec), flush=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
