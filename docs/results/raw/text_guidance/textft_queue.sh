#!/bin/bash
cd /work/main
export MPLCONFIGDIR=$PWD/.cache/matplotlib TORCH_HOME=$PWD/.cache/torch XDG_CACHE_HOME=$PWD/.cache/xdg
while pgrep -f "diffusa train --data mnist5k --init mnist-text" >/dev/null; do sleep 5; done
R=docs/results/raw/text_guidance
for w in 1.5 3; do
  .venv/bin/diffusa eval runs/text-ft --label all --n 1000 --seed 0 --sampler dpmpp_2m --steps 20 --guidance-scale $w > $R/ft_dpmpp_2m_w${w}_s0.json
  python3 -c "import json;m=json.load(open('$R/ft_dpmpp_2m_w${w}_s0.json'));print('ft w$w', round(m['fd']/m['fd_floor'],3), m['confident_share'], m.get('conditional_accuracy'), m['precision'], m['recall'])"
done
mkdir -p /tmp/gpft
.venv/bin/python benchmarks/guidance.py prompts --text-run runs/text-ft --prompt-scales 1.5 2 3 --final-only --n 200 --sample-steps 20 --raw /tmp/gpft --img /tmp/gpft 2>&1 | grep '"run"' | python3 -c "
import sys, json
for l in sys.stdin:
    d = json.loads(l); print('prompts', d['scale'], round(d['train'],3), round(d['held_out'],3), round(d['fd_train'],1), round(d['fd_held_out'],1))"
cp /tmp/gpft/guidance_prompts.json $R/prompts_textft_w1.5_2_3.json
echo "ALL DONE $(date +%T)"
