#!/bin/bash
# Issue 17 item 2: the remaining knobs on the class-conditional ten-minute recipe, one at a time.
cd /work/main
export MPLCONFIGDIR=$PWD/.cache/matplotlib TORCH_HOME=$PWD/.cache/torch XDG_CACHE_HOME=$PWD/.cache/xdg
BASE="model.conditioning='class'"
run() {  # NAME SIZING... -- SETS...
  name=$1; shift
  echo "=== $name $(date +%T)"
  /usr/bin/time -f "%e s" .venv/bin/python benchmarks/demo_sweep.py "$name" --base "$BASE" --curve dpmpp_2m_sde:20:3 \
    --samplers "" --keep runs/sweep/$name "$@" > runs/sweep/$name.log 2>&1
  for s in 0 1 2; do
    .venv/bin/diffusa eval runs/sweep/$name --n 1000 --label all --sampler dpmpp_2m_sde --steps 20 --eta 3 --seed $s \
      --out runs/sweep/$name/metrics_seed$s.json --force >> runs/sweep/$name.log 2>&1
  done
  echo "=== $name done $(date +%T)"
}
run K_cond_base --steps 2032
run K_loss_none --steps 2032 --set "loss.weighting='none'"
run K_lr_constant --steps 2032 --set "train.lr_decay='constant'"
run K_attn_4 --reference 0.2953 --set "model.net.attention_resolutions=[4]"
run K_attn_14_7_4 --reference 0.2953 --set "model.net.attention_resolutions=[14,7,4]"
run K_blocks2 --reference 0.2953 --set "model.net.num_res_blocks=2"
echo ALL DONE
