#!/bin/bash
# Issue 19's centre box: mask guidance w 3 plus autoguidance against a ten-minute mask-conditioned run
cd /work/main
export MPLCONFIGDIR=$PWD/.cache/matplotlib TORCH_HOME=$PWD/.cache/torch XDG_CACHE_HOME=$PWD/.cache/xdg
while ! grep -q "^rc=" /tmp/ci.log; do sleep 5; done
echo "train $(date +%T)"
.venv/bin/diffusa train --data mnist5k --set "data.inpaint='all'" --budget 10 --set train.sample_every=0 \
  --out runs/inpaint-guide --quiet > runs/inpaint-guide.log 2>&1
echo "probe $(date +%T)"
R=docs/results/raw/inpaint_autoguidance
for a in 1.5 2; do
  .venv/bin/python benchmarks/inpaint_seeds.py --mask center --seeds 2 --autoguidance $a --guide runs/inpaint-guide \
    --raw $R/center_ag${a}_seed2.json --out $R/center_ag${a}_seed2.md 2>&1 | grep seed
done
echo "ALL DONE $(date +%T)"
