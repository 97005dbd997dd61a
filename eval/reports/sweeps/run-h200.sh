#!/usr/bin/env bash
# The two device calls behind eval/reports/sweeps (NVIDIA H200, 2026-11-26), as `bash run-h200.sh 1|2` from
# the repository root with $OUT set. The bundle .gpu/ (git-ignored, carried to the device) held: model/ =
# all-MiniLM-L6-v2 with fp16 weights (the carry limit is 64 MiB), scifact/ = ../shared/beir/scifact,
# neg.jsonl = the negatives of recipes/star.yaml step 2, whl/ = datasets, dill, multiprocess wheels (the
# sentence-transformers trainer in bench_train.py needs them; the device has no package index).
# Call 1: STAR and Contriever grids, STAR's listwise loss at the MNRL bar's lr, then bench_train on the GPU.
# Call 2: STAR's grid extended past call 1's edge, Contriever at lower lr and with MoCo; the dev-selected
#         STAR model comes back as fp16 weights in 3 parts + a tar of the rest of its run folder.
set -u
stage=${1:?usage: run-h200.sh 1|2}
source "$(dirname "${BASH_SOURCE[0]}")/device-setup.sh"
D=.gpu/scifact; N=.gpu/neg.jsonl
COMMON="model=/tmp/minilm data=$D dev_negatives=$N precision=fp32"
# recipes/contriever.yaml then: in-batch, crops 0.1-0.5 (pinned here since the recipe changed after these calls)
CONTRIEVER_DEV="mode=inbatch ratio_min=0.1 ratio_max=0.5 dev_queries=80 dev_corpus=400 eval_steps=70 save_steps=0"
sweep() {  # sweep NAME RECIPE PARALLEL GRID... : one grid in the background, its table and log under $OUT
  local name=$1 recipe=$2 parallel=$3; shift 3
  timeout 360 python3 eval/sweep_train.py "$recipe" --grid "$@" --output_root /tmp/sw/${name%[0-9]} \
    --parallel "$parallel" --output $OUT/${name}_sweep.json > $OUT/$name.log 2>&1 &
}
if [ "$stage" = 1 ]; then
  sweep star recipes/star.yaml 4 lr=1e-4,2e-4 epochs=4,8 hard_negatives=1,4 --set $COMMON negatives=$N
  sweep star_softmax recipes/star.yaml 2 loss=softmax lr=2e-5 epochs=2,4 --set $COMMON negatives=$N
  sweep contriever recipes/contriever.yaml 3 lr=1e-5,3e-5,1e-4 max_steps=280,1120 --set $COMMON $CONTRIEVER_DEV
  wait
  timeout 120 python3 eval/bench_train.py --device cuda --model /tmp/minilm --data $D --negatives $N --runs 3 \
    --steps 20 --warmup 3 --ours_precision bf16 --st_precisions fp32 bf16 --output $OUT/bench_train_h200.json
else
  sweep star2 recipes/star.yaml 4 lr=2e-4,4e-4 epochs=8,12 hard_negatives=4 --set $COMMON negatives=$N
  sweep contriever2 recipes/contriever.yaml 4 lr=3e-6,1e-5 mode=inbatch,moco max_steps=560 --set $COMMON $CONTRIEVER_DEV
  wait
  python3 - <<'PY'
import json, os, tarfile
from safetensors.torch import load_file, save_file
out = os.environ['OUT']
best = json.load(open(f'{out}/star2_sweep.json'))['rows'][0]   # rows are ranked by dev nDCG@10
m = best['model']; run = os.path.dirname(m)
sd = load_file(f'{m}/model.safetensors')
save_file({k: v.half().contiguous() for k, v in sd.items()}, '/tmp/w.fp16', metadata={'format': 'pt'})
data = open('/tmp/w.fp16', 'rb').read(); n = (len(data) + 2) // 3
for i in range(3):
    open(f'{out}/weights.part{i}', 'wb').write(data[i * n:(i + 1) * n])
with tarfile.open(f'{out}/model_rest.tar.gz', 'w:gz') as t:
    t.add(m, arcname='best', filter=lambda ti: None if ti.name.endswith('model.safetensors') else ti)
    for f in ('log.jsonl', 'train_summary.json', 'train_args.json', 'training_curve.png'):
        if os.path.exists(f'{run}/{f}'):
            t.add(f'{run}/{f}', arcname=f)
PY
fi
