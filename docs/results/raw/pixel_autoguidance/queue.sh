#!/bin/bash
cd /work/main
export MPLCONFIGDIR=$PWD/.cache/matplotlib TORCH_HOME=$PWD/.cache/torch XDG_CACHE_HOME=$PWD/.cache/xdg
while [ ! -f runs/pixel-guide/metrics.json ] && pgrep -f "diffusa train --data mnist5k --budget 10" >/dev/null; do sleep 5; done
sleep 3
R=docs/results/raw/pixel_autoguidance
ev() {  # NAME SEED ETA W
  echo "start $1 $(date +%T)"
  /usr/bin/time -f "%e s" .venv/bin/diffusa eval mnist-pixel --n 1000 --sampler dpmpp_2m_sde --steps 20 --eta $3 \
    --autoguidance $4 --guide runs/pixel-guide --seed $2 > $R/$1.json
  python3 -c "import json;m=json.load(open('$R/$1.json'));print('$1', round(m['fd']/m['fd_floor'],3), m['confident_share'], m.get('precision'), m.get('recall'))"
}
ev w1.5_eta3_s0 0 3 1.5
ev w1.5_eta3_s1 1 3 1.5
ev w1.5_eta3_s2 2 3 1.5
ev w2_eta3_s0 0 3 2
ev w1.5_eta2_s0 0 2 1.5
ev w2_eta2_s0 0 2 2
echo "ALL DONE $(date +%T)"
