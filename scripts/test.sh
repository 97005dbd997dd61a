#!/usr/bin/env bash
# The tests: set up, then run the offline CPU test suite (needs ../shared/beir/scifact; under CI=true its
# absence fails the run). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
.venv/bin/python -m pytest -q --durations=15 "$@"
