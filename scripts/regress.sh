#!/usr/bin/env bash
# Rerun the cheap entries of eval/regressions.yaml (cost seconds or minutes); extra args go to `dretriever regress`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
export BEIR_DATA="${BEIR_DATA:-../shared/beir}"
.venv/bin/dretriever regress --max_cost minutes "$@"
