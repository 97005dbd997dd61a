#!/usr/bin/env bash
# Creates .venv beside this repository's root and installs dretriever with its test and ray extras into it.
# Idempotent: a second run only checks. torch is pinned (pyproject.toml) to the CPU build 2.13.0.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,ray]"
