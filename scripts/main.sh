#!/usr/bin/env bash
# The main job: set up, then index SciFact with all-MiniLM-L6-v2 (4 shards) and BM25, evaluate dense,
# BM25 and hybrid through Pyserini, and print the report (eval/reports/scifact-zero-shot/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
export BEIR_DATA="${BEIR_DATA:-../shared/beir}"
.venv/bin/dretriever eval beir --data "$BEIR_DATA/scifact" --model sentence-transformers/all-MiniLM-L6-v2 \
  --systems bm25 dense hybrid --shards 4 --output_dir eval/reports/scifact-zero-shot "$@"
