"""Probe for issue 30's OpenVINO int8 item: does OpenVINO's runtime, given the ``onnx-int8`` backend's QDQ graph
(``dretriever/quantize.py``: the same recipe and calibration passages), encode faster than the backends that exist?

In one process, interleaved round by round, on the same ``--docs`` SciFact passages in the encoder's token-budget
batches at ``--threads`` threads: ONNX Runtime int8 (``onnx-int8``), OpenVINO fp32 (``openvino --precision fp32``)
and OpenVINO running the int8 graph; documents/s (median of ``--runs``) and the minimum cosine of each to torch
fp32. OpenVINO executes QDQ graphs in int8 through its low-precision transformations; whether that pays depends on
the CPU's int8 instructions (AVX-512 VNNI / AMX), which the machine line names.

    python eval/probe_openvino_int8.py --data $BEIR_DATA/scifact
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dretriever.cli import parse, run_script
from dretriever.data.beir import load_beir
from dretriever.encoder import BiEncoder
from dretriever.openvino_runtime import OpenVinoSession
from dretriever.quantize import DEFAULT_PASSAGES, Calibration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardware import describe, machine  # noqa: E402


@dataclass
class ProbeArgs:
    data: str = field(metadata={"help": "a BEIR dataset folder (its corpus is encoded)"})
    model: str = field(default="sentence-transformers/all-MiniLM-L6-v2")
    docs: int = field(default=500, metadata={"help": "passages encoded per round (the corpus' first)"})
    runs: int = field(default=3, metadata={"help": "rounds; each backend once per round, medians reported"})
    threads: int = field(default=2)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def main(argv) -> int:
    args = parse(ProbeArgs, argv)
    torch.set_num_threads(args.threads)
    print(describe(machine()))
    texts = [doc.contents for doc in load_beir(args.data).corpus.values()]
    sample = texts[:args.docs]
    calibration = Calibration.sample(texts, DEFAULT_PASSAGES)
    reference = BiEncoder.from_pretrained(args.model).encode(sample, "doc", precision="fp32")
    int8 = BiEncoder.from_pretrained(args.model, backend="onnx-int8", calibration=calibration)
    int8_graph = int8.runtime("doc").path  # quantised (and cached) on first use
    openvino = BiEncoder.from_pretrained(args.model, backend="openvino")
    openvino_int8 = BiEncoder.from_pretrained(args.model, backend="openvino")
    tower = "query" if openvino_int8.tied else "doc"
    openvino_int8._runtimes[(tower, "fp32")] = OpenVinoSession(int8_graph, "fp32", args.threads)
    sides = {"onnx-int8 (ONNX Runtime)": int8, "openvino fp32": openvino, "openvino on the int8 graph": openvino_int8}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for name, encoder in sides.items():  # warm-up, and the cosine to torch fp32
        print(f"{name}: min cosine to torch fp32 {min_cosine(encoder.encode(sample, 'doc', precision='fp32'), reference):.5f}")
    for _ in range(args.runs):
        for name, encoder in sides.items():
            start = time.perf_counter()
            encoder.encode(sample, "doc", precision="fp32")
            rates[name].append(len(sample) / (time.perf_counter() - start))
    base = statistics.median(rates["openvino fp32"])
    for name, found in rates.items():
        print(f"{name}: {statistics.median(found):.1f} docs/s (median of {args.runs}; "
              f"{statistics.median(found) / base:.2f}x openvino fp32)")
    return 0


if __name__ == "__main__":
    run_script(main)
