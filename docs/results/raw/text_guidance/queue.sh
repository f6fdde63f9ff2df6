#!/bin/bash
# mnist-text: guidance scale and sampler, 1,000 samples with the labels in turn
cd /work/main
export MPLCONFIGDIR=$PWD/.cache/matplotlib TORCH_HOME=$PWD/.cache/torch XDG_CACHE_HOME=$PWD/.cache/xdg
R=docs/results/raw/text_guidance
ev() {  # NAME SEED ARGS...
  name=$1; seed=$2; shift 2
  .venv/bin/diffusa eval mnist-text --label all --n 1000 --seed $seed "$@" > $R/$name.json
  python3 -c "import json;m=json.load(open('$R/$name.json'));print('$name', round(m['fd']/m['fd_floor'],3), m['confident_share'], m.get('label_accuracy', m.get('conditional_accuracy')), m['precision'], m['recall'])"
}
for w in 1 1.5 2 3; do ev dpmpp_2m_w${w}_s0 0 --sampler dpmpp_2m --steps 20 --guidance-scale $w; done
for w in 1 1.5 2 3; do ev sde3_w${w}_s0 0 --sampler dpmpp_2m_sde --eta 3 --steps 20 --guidance-scale $w; done
echo "ALL DONE $(date +%T)"
