#!/usr/bin/env bash
# The main job: set up, then index SciFact with all-MiniLM-L6-v2 (4 shards) and BM25, evaluate dense,
# BM25 and hybrid through Pyserini, and print the report (eval/reports/scifact-zero-shot/) with each system's
# paired test against zero-shot MiniLM. fp32 encoding, so the figures are the README's on any CPU (bf16 autocast,
# --precision auto, moves MiniLM's nDCG@10 by about 0.001 on CPUs that have it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
export BEIR_DATA="${BEIR_DATA:-../shared/beir}"
.venv/bin/dretriever eval beir --data "$BEIR_DATA/scifact" --model sentence-transformers/all-MiniLM-L6-v2 \
  --systems dense bm25 hybrid --baseline dense --shards 4 --precision fp32 \
  --index_root indexes/fp32 --output_dir eval/reports/scifact-zero-shot "$@"
