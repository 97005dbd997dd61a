"""Inference backends for :meth:`BiEncoder.encode`: torch (default), ONNX Runtime in fp32 ("onnx") or in static
int8 calibrated on the user's passages ("onnx-int8", made from the fp32 export by :mod:`dretriever.quantize`),
and OpenVINO's runtime on the same fp32 export ("openvino").

The ``onnx`` backend exports one tower's transformer (token ids and mask in, last hidden state out) once with
``torch.onnx.export`` (the dynamo exporter: the TorchScript one mis-traced transformers 5's BERT, hidden states
off by ~4), and caches the file beside the model, in ``onnx/`` keyed by the weight fingerprint, so changed
weights never meet a stale export; a model folder that cannot be written caches under
``~/.cache/dretriever/onnx``. Pooling and normalisation stay in :mod:`dretriever.encoder`, identical for
every backend. The ``onnx`` graph runs in fp32 (ONNX Runtime applies its own BERT fusions when it loads it);
the ``openvino`` backend compiles the same file with OpenVINO (:mod:`dretriever.openvino_runtime`), in fp32 or,
for precision ``auto``, bf16 where the CPU has it; fp16 stays torch-only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import DretrieverError

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
ONNX_DIR = "onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise DretrieverError(f"backend: expected one of {BACKENDS}, got {name!r}")
    return name


def weights_fingerprint(models: dict[str, nn.Module | None]) -> str:
    """sha256 over every weight of ``models`` (prefix -> module; ``None`` skipped): names, dtypes, shapes, bytes."""
    h = hashlib.sha256()
    for prefix, model in models.items():
        if model is None:
            continue
        for name, t in sorted(model.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{prefix}{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Export(nn.Module):
    """The transformer with a plain signature; the padding mask goes in as an additive 4-D float mask. ``output``:
    the model output exported (``last_hidden_state`` of an encoder, ``logits`` of a cross-encoder)."""

    def __init__(self, model: nn.Module, token_types: bool, output: str = "last_hidden_state"):
        super().__init__()
        self.model, self.token_types, self.output = model, token_types, output

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        kw = {"token_type_ids": token_type_ids} if self.token_types else {}
        return getattr(self.model(input_ids=input_ids, attention_mask=additive, **kw), self.output)


def cache_dir(source: Path | None) -> Path:
    if source is not None and os.access(source, os.W_OK):
        return source / ONNX_DIR
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dretriever" / ONNX_DIR


def export_onnx(model: nn.Module, path: Path, token_types: bool, output: str = "last_hidden_state") -> Path:
    """Export ``model`` to ``path`` (written under a temporary name, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    mask = (ids != 0).long()
    args = (ids, mask) + ((torch.zeros_like(ids),) if token_types else ())
    names = list(INPUTS[:len(args)])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(_Export(model, token_types, output).eval(), args, tmp, input_names=names,
                              output_names=[output], dynamo=True, external_data=False,
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names}, verbose=False)
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise DretrieverError("backend: 'onnx' needs onnxruntime and onnx (pip install 'dretriever[onnx]')") from e
    return ort


def feed(names: list[str], batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A padded token batch (:mod:`dretriever.token_batches`) as the inputs ``names`` of an ONNX graph (an input
    the batch lacks, ``token_type_ids``, goes in as zeros)."""
    return {n: batch[n].numpy() if n in batch else np.zeros_like(batch["input_ids"].numpy()) for n in names}


def exported(model: nn.Module, cache: Path, key: str, output: str = "last_hidden_state") -> Path:
    """The fp32 ONNX file of ``model``'s ``output`` under ``cache`` (exported the first time ``key`` is asked for)."""
    onnxruntime()  # before exporting: a missing package is named first
    path = cache / f"{key}.onnx"
    if not path.is_file():
        export_onnx(model, path, getattr(model.config, "type_vocab_size", 0) > 0, output)
    return path


class OnnxSession:
    """An ONNX file run by ONNX Runtime on the CPU, fed the padded token batches of :mod:`dretriever.token_batches`;
    returns the graph's output (an encoder's last hidden state, a cross-encoder's logits)."""

    def __init__(self, path: Path, threads: int | None = None):
        ort = onnxruntime()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, feed(self.names, batch))[0])
