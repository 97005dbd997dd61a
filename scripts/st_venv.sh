#!/usr/bin/env bash
# Creates .venv-st beside this repository's root: sentence-transformers with its onnx and openvino backends
# (optimum, optimum-intel), the baseline side of eval/bench_encode.py and eval/bench_search.py. It lives apart
# from .venv because optimum pins an older transformers than dretriever's; the benchmarks drive it as a
# subprocess (eval/st_worker.py). torch is pinned to the CPU build (unpinned, pip pulls a multi-GB CUDA build).
# Idempotent: a second run only checks. Prints the versions it holds.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ ! -x .venv-st/bin/python ] || ! .venv-st/bin/python -c "import sentence_transformers, optimum.intel, onnxruntime" 2>/dev/null; then
  python3 -m venv .venv-st
  .venv-st/bin/python -m pip install --quiet --upgrade pip
  .venv-st/bin/python -m pip install --quiet "torch==2.13.0" "sentence-transformers[onnx,openvino]"
fi
.venv-st/bin/python - <<'PY'
from importlib.metadata import version
print(" ".join(f"{p} {version(p)}" for p in ("sentence-transformers", "transformers", "torch", "optimum",
                                             "optimum-intel", "openvino", "onnxruntime")))
PY
