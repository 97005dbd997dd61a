#!/usr/bin/env bash
# A Ray cluster on this one machine: build a datastore with Ray Data, serve it with Ray Serve, stop the cluster.
# Usage: bash recipes/ray/local-cluster.sh CORPUS.jsonl OUTPUT_FOLDER [SHARDS]
# (pip install 'dretriever[ray]' first; scripts/setup.sh installs it.)
set -euo pipefail
corpus=${1:?corpus (JSONL, Parquet or a text folder)}
out=${2:?datastore folder}
shards=${3:-4}
export RAY_USAGE_STATS_ENABLED=0
# Two logical CPUs per core: one per encoder actor plus room for Ray Data's reads and the shard-finishing tasks
# (with exactly one logical CPU per actor, the actors hold them all and the reads wait forever).
ray start --head --num-cpus $((2 * $(nproc))) --include-dashboard=false --disable-usage-stats
trap 'ray stop' EXIT
# --workers 0: one encoder actor per GPU, else one per --worker_cpus CPUs of the cluster less one for reading.
dretriever datastore build --sources "$corpus" --output "$out" --shards "$shards" --chunking words \
    --engine ray --address auto --worker_cpus 1
# Ctrl-C stops serving. The same API as `dretriever serve "$out"` on 127.0.0.1:8000.
dretriever serve "$out" --engine ray --address auto --shard_groups 2
