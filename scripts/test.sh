#!/usr/bin/env bash
# The tests: set up, then run the offline CPU test suite (needs ../shared/beir/scifact; under CI=true its
# absence fails the run). With arguments: one pytest run of them; without: the suite, then the Ray tests apart.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q --durations=15 "$@"
fi
# Two pytest processes: Ray's signal handlers crash a JVM (Pyserini) started before ray.init in the same
# process, so the Ray tests (a local cluster started in-process) run in a process of their own.
ray_tests=(tests/test_ray_build.py tests/test_ray_serve.py)
.venv/bin/python -m pytest -q --durations=15 "${ray_tests[@]/#/--ignore=}"
.venv/bin/python -m pytest -q --durations=5 "${ray_tests[@]}"
