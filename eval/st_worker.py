"""The sentence-transformers side of the benchmarks, run by the side venv's Python (scripts/st_venv.sh).

It imports nothing of dretriever (the side venv has another transformers) and speaks JSON lines on stdin/stdout,
one reply per request; embeddings go back as ``.npy`` files in a folder the client owns. ``encode`` times
``SentenceTransformer.encode`` alone, so the pipe and the file never count against sentence-transformers.

Requests::

    {"op": "versions"}
    {"op": "load", "key": "openvino auto", "model": PATH, "backend": "torch|onnx|openvino",
     "precision": "fp32|autocast|bf16-weights|auto", "threads": 2}
    {"op": "encode", "key": "openvino auto", "texts": [...], "batch_size": 32, "out": "/tmp/x.npy"}

``precision`` per backend: torch ``fp32`` (plain), ``autocast`` (bf16 autocast), ``bf16-weights`` (the model
cast to bf16); onnx ``fp32`` (ONNX Runtime has no bf16 path here); openvino ``fp32`` (inference precision
forced to f32) or ``auto`` (OpenVINO's default: bf16 where the CPU has it).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from importlib.metadata import version


def load(req: dict):
    import torch
    from sentence_transformers import SentenceTransformer

    threads = int(req.get("threads") or 0)
    if threads:
        torch.set_num_threads(threads)
    backend, precision = req["backend"], req["precision"]
    kwargs = {}
    if backend == "openvino":
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        elif precision != "auto":
            raise ValueError(f"openvino precision {precision!r}: fp32 | auto")
        kwargs = {"backend": "openvino", "model_kwargs": {"ov_config": config}}
    elif backend == "onnx":
        if precision != "fp32":
            raise ValueError(f"onnx precision {precision!r}: fp32 only")
        kwargs = {"backend": "onnx", "model_kwargs": {"provider": "CPUExecutionProvider"}}
    elif backend != "torch" or precision not in ("fp32", "autocast", "bf16-weights"):
        raise ValueError(f"backend {backend!r} precision {precision!r}")
    model = SentenceTransformer(req["model"], device="cpu", **kwargs)
    if precision == "bf16-weights":
        model = model.to(torch.bfloat16)

    def encode(texts, batch_size):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "autocast" else contextlib.nullcontext()
        with ctx:
            emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True)
        return emb.float().cpu().numpy()

    encode(["warm-up"], 1)
    return encode


def main() -> int:
    import numpy as np

    models = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "versions":
                reply = {p: version(p) for p in ("sentence-transformers", "transformers", "torch", "optimum",
                                                   "optimum-intel", "openvino", "onnxruntime")
                         if _installed(p)}
            elif req["op"] == "load":
                models[req["key"]] = load(req)
                reply = {"loaded": req["key"]}
            elif req["op"] == "encode":
                start = time.perf_counter()
                emb = models[req["key"]](req["texts"], int(req["batch_size"]))
                seconds = time.perf_counter() - start
                np.save(req["out"], emb)
                reply = {"seconds": seconds}
            else:
                raise ValueError(f"unknown op {req['op']!r}")
        except Exception as e:  # noqa: BLE001  (any failure goes back to the client, which reports it)
            reply = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        print(json.dumps(reply), flush=True)
    return 0


def _installed(package: str) -> bool:
    try:
        version(package)
        return True
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":
    sys.exit(main())
