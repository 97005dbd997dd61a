"""The ``openvino`` inference backend: the ``onnx`` backend's cached fp32 export (:mod:`dretriever.runtime`) compiled
by OpenVINO's runtime for the CPU (no optimum: ``Core().read_model`` reads the ONNX file itself).

Precision means what it means for torch: ``fp32`` forces fp32 arithmetic (``INFERENCE_PRECISION_HINT: f32``;
held to the fp32 bar, cosine >= 0.999 to torch fp32); ``auto`` runs bf16 where the CPU does it natively
(OpenVINO reports ``BF16`` among its optimisation capabilities: AVX-512 BF16 / AMX) and fp32 elsewhere, as
:func:`dretriever.encoder.autocast_dtype` decides for torch. The graph keeps the export's dynamic batch and
sequence axes, so batches of any shape run without a reshape. Threads follow torch's setting
(``INFERENCE_NUM_THREADS``), so a one-thread run stays on one thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from .errors import DretrieverError
from .runtime import feed

PRECISIONS = ("auto", "fp32")


def openvino():
    try:
        import openvino as ov
    except ImportError as e:  # pragma: no cover - openvino is a dependency
        raise DretrieverError("backend: 'openvino' needs the openvino package (pip install openvino)") from e
    return ov


def inference_precision(core, precision: str) -> str:
    """OpenVINO's element type for ``precision``: ``bf16`` for ``auto`` where the CPU has native bf16, else ``f32``."""
    if precision not in PRECISIONS:
        raise DretrieverError(f"precision: the openvino backend runs auto or fp32, got {precision!r}")
    native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if precision == "auto" and native_bf16 else "f32"


def compile_config(element_type: str, threads: int) -> dict:
    """The CPU plugin's settings: one stream for latency, ``threads`` threads, the inference precision."""
    return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": element_type}


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO for the CPU, fed the padded token batches of
    :mod:`dretriever.token_batches`; returns the last hidden state (float32). Calls are serialised: the one infer
    request is reused, and a reopened Retriever may share the encoder with the one it replaces."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None):
        ov = openvino()
        core = ov.Core()
        self.path = Path(path)
        self.precision = inference_precision(core, precision)
        config = compile_config(self.precision, threads or torch.get_num_threads())
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        self.names = [port.any_name for port in self.compiled.inputs]
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.lock:
            result = self.request.infer(feed(self.names, batch))  # outputs copied out of the request
        return torch.from_numpy(result[0])
