"""Quick test: mask guidance in a noise interval (t > t0: w_hi; else w_lo)."""
import json
import sys
import time

sys.path.insert(0, "/work/main/benchmarks")
from editing import held_out, split_masks

import diffusa
from diffusa import guidance
from diffusa.metrics import classify

orig = guidance.ClassifierFreeGuided.mix
CFG = {}
def mix(self, x, t, cond):
    tt = float(t.flatten()[0])
    s = CFG["hi"] if tt > CFG["t0"] else CFG["lo"]
    old = self.scale
    self.scale = s
    try:
        return orig(self, x, t, cond)
    finally:
        self.scale = old
guidance.ClassifierFreeGuided.mix = mix

x, y, idx = held_out(1000)
mask = split_masks(sys.argv[1], 1)
pipe = diffusa.load("mnist-inpaint")
seeds = [int(s) for s in sys.argv[2].split(",")]
for spec in sys.argv[3:]:
    hi, lo, t0 = map(float, spec.split(":"))
    CFG.update(hi=hi, lo=lo, t0=t0)
    accs = []
    for seed in seeds:
        t1 = time.time()
        res = pipe.inpaint(x, mask, steps=20, seed=seed, sampler="ddpm", jump_length=5, jump_n_sample=1,
                           guidance_scale=3.0)
        accs.append(float((classify(res.samples)[1].argmax(1) == y).float().mean()))
    print(json.dumps({"mask": sys.argv[1], "hi": hi, "lo": lo, "t0": t0, "seeds": seeds, "acc": accs,
                      "mean": sum(accs) / len(accs), "s": round(time.time() - t1, 1)}), flush=True)
