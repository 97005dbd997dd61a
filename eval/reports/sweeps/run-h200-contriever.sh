#!/usr/bin/env bash
# Contriever sweeps behind eval/reports/sweeps/contriever-devall-h200*.json (NVIDIA H200, device tool, two calls),
# run as `bash eval/reports/sweeps/run-h200-contriever.sh 1|2` from the repository root with $OUT set and the
# bundle .gpu/ described in run-h200.sh. The dev split is every query of qrels/train.tsv (809; Contriever
# reads no queries or labels in training, so all of them can judge its checkpoints) scored over the whole
# corpus, unlike the 80-query / 767-document dev of the earlier Contriever grids, which did not rank runs.
# Call 1: MoCo lr and seeds, short crops, in-batch. Call 2 (after call 1 chose MoCo, lr 1e-5, crops 0.05-0.25):
# that setting's spread over seeds, and crop ranges and in-batch around it.
set -u
stage=${1:?usage: run-h200-contriever.sh 1|2}
source "$(dirname "${BASH_SOURCE[0]}")/device-setup.sh"
SET="model=/tmp/minilm data=.gpu/scifact precision=fp32 dev_queries=809 dev_corpus=0 eval_steps=70 save_steps=0"
SET="$SET eval_at_start=false max_steps=840"
sweep() {  # sweep NAME PARALLEL GRID... : one grid of recipes/contriever.yaml in the background
  local name=$1 parallel=$2; shift 2
  timeout 330 python3 eval/sweep_train.py recipes/contriever.yaml --grid "$@" --output_root /tmp/sw/$name \
    --parallel "$parallel" --set $SET --output $OUT/${name}_sweep.json > $OUT/$name.log 2>&1 &
}
if [ "$stage" = 1 ]; then  # ran when the recipe still had crops of 0.1-0.5 (as the earlier grids)
  SET="$SET ratio_min=0.1 ratio_max=0.5"
  sweep moco_lr 3 mode=moco lr=5e-6,1e-5,2e-5
  sweep moco_seed 2 mode=moco lr=1e-5 seed=1,2
  sweep moco_short 1 mode=moco lr=1e-5 ratio_min=0.05 ratio_max=0.25
  sweep inbatch 2 mode=inbatch lr=3e-6,1e-5
else
  sweep short_seed 3 mode=moco lr=1e-5 ratio_min=0.05 ratio_max=0.25 seed=1,2,3
  sweep short_ratio 2 mode=moco lr=1e-5 ratio_min=0.05 ratio_max=0.15,0.35
  sweep short_inbatch 2 mode=inbatch lr=3e-6,1e-5 ratio_min=0.05 ratio_max=0.25
fi
wait
