"""The fastest query-encoding setting for the CPU at hand: which inference backend (torch, ONNX Runtime or OpenVINO)
and which token budget per batch, measured once per CPU, model, precision and software versions, then cached.

Why measured and not a constant: the fastest fp32 query backend has differed with the CPU on every machine this
project has been benchmarked on (``eval/bench_search.py``, reports in ``eval/reports/search``): ONNX Runtime on an
AVX2-only AMD EPYC (2026-12-03: 4.28x Pyserini, torch 3.43x), ONNX Runtime on an AMD EPYC Zen 4 (3.49x, torch
3.13x), OpenVINO on an Intel Xeon with AVX-512 BF16 and AMX (2026-12-06: 3.69x, ONNX Runtime 2.62x), and at
precision ``auto`` on that Xeon torch in bf16 (6.39x) ahead of OpenVINO's bf16 (5.99x); 2026-12-07 there, after
the Flat scan and with torch on bf16 weights: fp32 OpenVINO at 1,024 tokens, ``auto`` torch at 4,096.

What is measured: :data:`SAMPLE` synthetic queries (seeded; 4-24 words drawn from the tokenizer's whole-word
vocabulary, about the lengths of BEIR's queries) encoded by every candidate, round-robin over :data:`ROUNDS`
rounds after one warm-up each (which also pays the one-off ONNX export and OpenVINO compile); the candidate with
the lowest median time wins. Candidates are every backend in :data:`CANDIDATES` at every budget in
:data:`BUDGETS`, at the precision asked:

- ``fp32``: torch, onnx, openvino, each held to cosine >= 0.999 to torch fp32 (``tests/test_runtime.py``,
  ``tests/test_openvino.py``), so the choice changes speed, not rankings beyond float noise.
- ``auto``: torch and openvino in bf16 where the CPU has native bf16 (else fp32), onnx in fp32.
- ``bf16`` / ``fp16``: torch only, nothing to measure. ``onnx-int8`` is never chosen: it is an opt-in with its
  own quality bar, and an index built with it keeps it for its queries.

The decision is cached in ``$XDG_CACHE_HOME/dretriever/query_backend.json`` (default ``~/.cache``), keyed by the
CPU's model name and SIMD flags, torch's thread count, the precision, the model's weight fingerprint and the
versions of torch, onnxruntime and openvino; any change measures again. ``DRETRIEVER_QUERY_BACKEND`` pins the
choice without measuring: a backend name, or ``index`` for the backend the index was built with (a deployment
that wants the same backend on every machine, and the test suite, which checks the measurement on its own).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from .encoder import BiEncoder
from .errors import DretrieverError
from .runtime import BACKENDS

log = logging.getLogger(__name__)

PIN_ENV = "DRETRIEVER_QUERY_BACKEND"
CACHE_NAME = "query_backend.json"
CANDIDATES = ("torch", "onnx", "openvino")
BUDGETS = (512, 1024, 2048, 4096)  # padded tokens per query batch
SAMPLE, ROUNDS, SEED = 256, 3, 0
# bumped when a backend's own inference path changes, so that decisions cached before are measured again
# (2: torch runs bf16 weights rather than autocast on bf16 CPUs; exported backends pool in numpy; 2026-12-07)
PATHS = 2
BATCH_SIZE = 128  # queries per batch at most, Retriever.load's default: the budget decides below it
# the SIMD features that decide which kernels the backends run (a CPU with the same model name but a
# different hypervisor mask is a different machine to them)
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
         "amx_int8", "avx512_fp16")


@dataclass
class Choice:
    """The query setting chosen for one (CPU, model, precision): ``backend`` and ``max_tokens``, with the queries
    per second every candidate measured (``"backend@max_tokens"``) and whether it came from the cache."""
    backend: str
    max_tokens: int
    qps: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def cpu_key() -> str:
    """The CPU's model name and its relevant SIMD flags (``/proc/cpuinfo``; the platform's name elsewhere)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return f"{name} [{' '.join(f for f in FLAGS if f in flags)}]"


def _versions() -> str:
    out = []
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            out.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            out.append(f"{package} -")
    return ", ".join(out)


def cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dretriever" / CACHE_NAME


def cache_key(encoder: BiEncoder, precision: str) -> str:
    return " | ".join((cpu_key(), f"{torch.get_num_threads()} threads", precision, encoder.fingerprint()[:16],
                       _versions(), f"paths {PATHS}"))


def sample_queries(tokenizer, n: int = SAMPLE, seed: int = SEED) -> list[str]:
    """``n`` seeded queries of 4-24 whole words from ``tokenizer``'s vocabulary (no subword pieces or specials)."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2)
    if not words:
        raise DretrieverError("autotune: the tokenizer's vocabulary has no whole words to draw sample queries from")
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 25)))) for _ in range(n)]


def candidates(precision: str) -> tuple[str, ...]:
    return CANDIDATES if precision in ("auto", "fp32") else ("torch",)


def measure(encoder: BiEncoder, precision: str, queries: list[str] | None = None,
            backends: tuple[str, ...] | None = None, budgets: tuple[int, ...] = BUDGETS,
            rounds: int = ROUNDS) -> dict[str, float]:
    """Queries per second of every ``backend@budget``: the median over ``rounds`` interleaved rounds, each
    candidate warmed up once first (export, compile and first-call costs are not counted). A backend that fails
    (an export that does not trace this architecture, say) is left out with a warning."""
    queries = queries if queries is not None else sample_queries(encoder.tokenizer)
    towers = {}

    def encode(backend: str, budget: int) -> float:
        start = time.perf_counter()
        towers[backend].encode_queries(queries, batch_size=BATCH_SIZE, precision=precision, max_tokens=budget,
                                       progress=False)
        return time.perf_counter() - start

    for backend in backends or candidates(precision):
        try:  # the warm-up of each budget; a backend that cannot run this model is left out, not fatal
            towers[backend] = encoder.with_backend(backend)
            for budget in budgets:
                encode(backend, budget)
        except Exception as e:  # noqa: BLE001 - an export or runtime failure of an optional accelerator
            towers.pop(backend, None)
            log.warning("autotune: backend %s left out for this model (%s: %s)", backend, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
    if not towers:
        raise DretrieverError(f"autotune: no backend of {backends or candidates(precision)} could encode queries")
    runs = [(b, t) for b in towers for t in budgets]
    seconds: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    for _ in range(rounds):
        for run in runs:
            seconds[run].append(encode(*run))
    return {f"{b}@{t}": len(queries) / statistics.median(s) for (b, t), s in seconds.items()}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent or unreadable: measure again
        return {}


def _write(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(entries, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def fastest(encoder: BiEncoder, precision: str) -> Choice | None:
    """The cached choice for ``encoder`` at ``precision`` on this CPU, measured (and cached) when there is none;
    ``None`` where there is nothing to choose (a GPU, or a precision only torch runs)."""
    if encoder.device.type != "cpu" or len(candidates(precision)) == 1:
        return None
    path, key = cache_path(), cache_key(encoder, precision)
    entry = _read(path).get(key)
    if entry is not None:
        return Choice(**{**entry, "cached": True})
    log.info("choosing the query backend for this CPU at precision %s (measured once, cached in %s)", precision, path)
    qps = measure(encoder, precision)
    best = max(qps, key=qps.get)
    backend, budget = best.split("@")
    choice = Choice(backend, int(budget), {k: round(v, 1) for k, v in qps.items()})
    entries = _read(path)
    entries[key] = {k: v for k, v in asdict(choice).items() if k != "cached"}
    _write(path, entries)
    log.info("query backend: %s at %s tokens per batch (queries/s: %s)", backend, budget,
             ", ".join(f"{k} {v:.0f}" for k, v in sorted(qps.items(), key=lambda kv: -kv[1])))
    return choice


def query_encoder(encoder: BiEncoder, precision: str, built_backend: str) -> tuple[BiEncoder, int | str]:
    """The query encoder a :class:`~dretriever.search.retriever.Retriever` uses when no backend was asked for:
    ``encoder`` (loaded with the index's backend ``built_backend``) on the fastest backend for this CPU, with the
    token budget that won (or ``"auto"`` where nothing was measured). ``DRETRIEVER_QUERY_BACKEND`` pins it."""
    pin = os.environ.get(PIN_ENV, "").strip()
    if pin:
        if pin == "index":
            return encoder, "auto"
        if pin not in BACKENDS or pin == "onnx-int8":
            raise DretrieverError(f"{PIN_ENV}: expected index or one of {CANDIDATES}, got {pin!r}")
        return encoder.with_backend(pin), "auto"
    if built_backend == "onnx-int8":  # its queries stay int8, as the index was calibrated
        return encoder, "auto"
    choice = fastest(encoder, precision)
    if choice is None:
        return encoder, "auto"
    return encoder.with_backend(choice.backend), choice.max_tokens
