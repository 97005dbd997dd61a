"""sentence-transformers, the benchmarks' baseline, driven in its own venv (scripts/st_venv.sh, eval/st_worker.py).

Its onnx and openvino backends need optimum / optimum-intel, which pin an older transformers than dretriever's:
they cannot share our venv, so the baseline runs as a subprocess of the benchmark, interleaved round by round
with our side on the same texts. The worker times ``encode`` itself; what comes back is that time and the
embeddings, so the pipe costs sentence-transformers nothing.

The settings per ``--precision`` of the benchmarks (each at its best batch size, swept by the caller):

- ``fp32``: torch fp32, onnx fp32, openvino fp32 (inference precision forced to f32);
- ``bf16``: torch under bf16 autocast, and torch with bf16 weights;
- ``auto``: what each backend does by default on this CPU, plus the bf16 torch variants a user would try:
  torch fp32, torch autocast, torch bf16 weights, onnx fp32, openvino auto (bf16 where the CPU has it).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIDE_PYTHON = REPO / ".venv-st" / "bin" / "python"

VARIANTS = {
    "fp32": [("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32")],
    "bf16": [("torch", "autocast"), ("torch", "bf16-weights")],
    "auto": [("torch", "fp32"), ("torch", "autocast"), ("torch", "bf16-weights"), ("onnx", "fp32"),
             ("openvino", "auto")],
}


@dataclass
class Timed:
    """A result with the seconds it took as measured where it ran (for ``bench_search.interleaved``)."""
    seconds: float
    value: object


class SentenceTransformersSide:
    """One worker process in the side venv holding every loaded (backend, precision) model."""

    def __init__(self, python: str | os.PathLike = "", threads: int = 0):
        python = Path(python) if python else SIDE_PYTHON
        if not python.exists():
            if python != SIDE_PYTHON:
                raise SystemExit(f"{python}: no such Python (the sentence-transformers side venv)")
            print("creating the sentence-transformers side venv (scripts/st_venv.sh, ~2 min, once)", flush=True)
            subprocess.run(["bash", str(REPO / "scripts" / "st_venv.sh")], check=True)
        self.threads = threads
        self.tmp = tempfile.TemporaryDirectory(prefix="st-side-")
        self.proc = subprocess.Popen([str(python), str(REPO / "eval" / "st_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.versions = self._ask({"op": "versions"})
        self._n = 0

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the sentence-transformers worker exited (code {self.proc.poll()})")
        return json.loads(line)

    def load(self, model: str, backend: str, precision: str) -> str | None:
        """Load one setting; None when it loaded, else why not."""
        reply = self._ask({"op": "load", "key": f"{backend} {precision}", "model": str(model), "backend": backend,
                           "precision": precision, "threads": self.threads})
        return reply.get("error")

    def settings(self, model: str, precision: str, backends: list[str], batch_sizes: list[int],
                 prefix: str = "") -> tuple[list[tuple[str, int, object]], dict[str, str]]:
        """Every setting to sweep at ``precision`` (``VARIANTS``), loaded: ``(key, batch size, encode)`` with
        ``encode(texts) -> Timed`` (``prefix`` put before each text), and why each variant that failed to load
        did."""
        out, missing = [], {}
        for backend, variant in VARIANTS[precision]:
            if backend not in backends:
                continue
            key = f"{backend} {variant}"
            why = self.load(model, backend, variant)
            if why:
                missing[key] = why
                continue
            out += [(key, bs, lambda texts, key=key, bs=bs: self.encode(key, [prefix + t for t in texts], bs))
                    for bs in batch_sizes]
        return out, missing

    def encode(self, key: str, texts: list[str], batch_size: int) -> Timed:
        """Embeddings of ``texts`` (fp32 numpy) and the seconds ``encode`` took in the worker."""
        self._n += 1
        out = os.path.join(self.tmp.name, f"{self._n}.npy")
        reply = self._ask({"op": "encode", "key": key, "texts": texts, "batch_size": batch_size, "out": out})
        if "error" in reply:
            raise RuntimeError(f"sentence-transformers {key}: {reply['error']}")
        emb = np.load(out)
        os.unlink(out)
        return Timed(reply["seconds"], emb)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def describe_versions(versions: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())
