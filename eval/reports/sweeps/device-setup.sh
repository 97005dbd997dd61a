# Sourced by run-h200*.sh on the device machine (repository root, bundle .gpu/ carried): offline environment,
# the bundle's wheels on PYTHONPATH, and all-MiniLM-L6-v2 widened from the bundle's fp16 weights to fp32 in
# /tmp/minilm (a device call carries at most 64 MiB).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L
python3 - <<'PY'
import shutil
from safetensors.torch import load_file, save_file
shutil.copytree('.gpu/model', '/tmp/minilm', ignore=shutil.ignore_patterns('model.fp16.safetensors'))
sd = load_file('.gpu/model/model.fp16.safetensors')
save_file({k: v.float().contiguous() for k, v in sd.items()}, '/tmp/minilm/model.safetensors', metadata={'format': 'pt'})
PY
