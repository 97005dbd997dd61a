#!/usr/bin/env bash
# Creates .venv beside this repository's root and installs dretriever with its test and ray extras into it,
# at the exact tested versions of constraints.txt (pyproject.toml states only ranges; torch: the CPU build).
# Idempotent: a second run only checks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test,ray]"
