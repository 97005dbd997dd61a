"""What a benchmark prints about the machine, and the arithmetic ceiling its figures are read against.

``machine()``: the CPU model, core count, its SIMD flags (AVX2 / AVX-512 / BF16 / VNNI / AMX), torch's
threads and whether oneDNN has native bf16. ``gemm_ceiling()``: GFLOP/s of one plain GEMM of a
transformer's own shapes (tokens x hidden @ hidden x intermediate), fp32 and bf16, measured in the
benchmark's own process and run, so "achieved GFLOP/s" of an encoder can be read as a share of what the
cores deliver right then. ``encoder_flops()``: the useful floating-point work of a BERT-style forward pass
over given token counts (padding excluded), the numerator of every achieved GFLOP/s.
"""

from __future__ import annotations

import os
import platform
import time

import torch


def machine() -> dict:
    cpu, flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("avx", "amx", "fma")) or f == "f16c"]
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": simd, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def describe(m: dict) -> str:
    return (f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
            f"native bf16: {m['native_bf16']}\nSIMD flags: {' '.join(m['simd'])}")


def gemm_ceiling(hidden: int = 384, intermediate: int = 1536, tokens: int = 4096, seconds: float = 1.0) -> dict:
    """Best GFLOP/s of ``[tokens x hidden] @ [hidden x intermediate]`` in fp32 and bf16 (torch.matmul)."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(tokens, hidden).to(dtype)
        b = torch.randn(hidden, intermediate).to(dtype)
        torch.matmul(a, b)
        best, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * tokens * hidden * intermediate / best / 1e9
    out["shape"] = f"{tokens}x{hidden}x{intermediate}"
    return out


def encoder_flops(config, lengths) -> float:
    """Floating-point operations of a BERT-style encoder over rows of ``lengths`` real tokens (no padding):
    per layer the four attention projections and the two feed-forward matrices (2 flops per multiply-add),
    plus the attention scores and weighted sum (``4 * len^2 * hidden`` per row)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = float(sum(lengths))
    squares = float(sum(int(n) * int(n) for n in lengths))
    return layers * (2 * tokens * (4 * h * h + 2 * h * i) + 4 * squares * h)
