"""Static int8 for the ``onnx-int8`` backend: a calibration sample of the user's own passages, and the
quantised graph made from the ``onnx`` backend's fp32 export.

Recipe (chosen by ``eval/probe_int8.py``; report in ``eval/reports/encode``): ONNX Runtime's
``quantize_static`` in QDQ form, int8 weights per output channel, uint8 activations, MinMax ranges read on the
calibration passages. Only ``MatMul``s with a weight are quantised, and not all of them: attention's two
products of activations by activations, and the feed-forward output projections (whose inputs, after GELU,
carry the outliers), stay fp32. Quantising every product cost cosine ~0.93 to fp32; this recipe kept 0.99 and
SciFact nDCG@10 within 0.005 of fp32, at 1.4x fp32 ONNX's documents/s on a 2-core Zen 4.

The calibration is data: :class:`Calibration` (the passages, in order) is drawn from the corpus at build time
with a seed, written beside the index as ``calibration.jsonl`` and named in the manifest by its sha256, so the
query side quantises the same graph. The quantised file is cached beside the fp32 export, keyed by the weight
fingerprint, the calibration's sha256 and :data:`RECIPE`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .data.jsonl import read_jsonl
from .errors import DataError, DretrieverError
from .runtime import feed

CALIBRATION_FILE = "calibration.jsonl"
DEFAULT_PASSAGES = 256
RECIPE = "int8-qdq-v1"  # change when the recipe below changes: cached graphs are keyed by it
FFN_ACTIVATIONS = ("Gelu", "Mul", "Erf", "FastGelu", "BiasGelu")


@dataclass(frozen=True)
class Calibration:
    """The passages a static int8 graph is calibrated on (document text as the index encodes it)."""

    texts: tuple[str, ...]

    def __post_init__(self):
        if not self.texts:
            raise DretrieverError("calibration: needs at least one passage")

    @classmethod
    def sample(cls, texts: Sequence[str], n: int = DEFAULT_PASSAGES, seed: int = 0) -> "Calibration":
        """``n`` passages drawn without replacement (seeded) from ``texts``, in corpus order; all when fewer."""
        if n < 1:
            raise DretrieverError(f"calibration: the number of passages must be at least 1, got {n}")
        picks = np.random.default_rng(seed).choice(len(texts), min(n, len(texts)), replace=False)
        return cls(tuple(texts[i] for i in np.sort(picks)))

    @classmethod
    def read(cls, path: str | Path) -> "Calibration":
        """The passages of a ``calibration.jsonl`` (one ``{"text": ...}`` per line); bad lines named as file:line."""
        path = Path(path)
        if not path.is_file():
            raise DretrieverError(f"{path}: the index's calibration passages are missing (backend onnx-int8)")
        texts = []
        for number, obj in read_jsonl(path):
            if not isinstance(obj.get("text"), str):
                raise DataError(path, 'expected {"text": "..."} with a string', number)
            texts.append(obj["text"])
        return cls(tuple(texts))

    def lines(self) -> str:
        return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in self.texts)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.lines().encode("utf-8")).hexdigest()

    def describe(self) -> dict:
        """The manifest's record of this calibration (``encoder.calibration``)."""
        return {"file": CALIBRATION_FILE, "passages": len(self.texts), "sha256": self.sha256, "recipe": RECIPE}

    def check(self, recorded: dict, where) -> "Calibration":
        """This calibration, if it is the one ``recorded`` in an index's manifest, under this version's recipe."""
        if recorded.get("recipe") != RECIPE:
            raise DretrieverError(f"{where}: built with the int8 recipe {recorded.get('recipe')!r}, but this version "
                                  f"quantises with {RECIPE!r}: rebuild the index, or search it with backend onnx")
        if recorded.get("sha256") != self.sha256:
            raise DretrieverError(f"{where}: {CALIBRATION_FILE} (sha256 {self.sha256[:12]}) is not the calibration "
                                  f"the index was built with ({str(recorded.get('sha256'))[:12]})")
        return self


def weighted_matmuls(graph) -> tuple[list[str], list[str]]:
    """``(quantised, kept_fp32)`` names of the graph's MatMuls under the recipe."""
    weights = {w.name for w in graph.initializer}
    producer = {o: n.op_type for n in graph.node for o in n.output}
    quantised, kept = [], []
    for n in graph.node:
        if n.op_type != "MatMul":
            continue
        has_weight = bool(weights & set(n.input))
        after_activation = any(producer.get(i) in FFN_ACTIVATIONS for i in n.input)
        (quantised if has_weight and not after_activation else kept).append(n.name)
    return quantised, kept


def int8_path(fp32: Path, calibration: Calibration) -> Path:
    """Where the int8 graph of the fp32 export ``fp32`` calibrated on ``calibration`` is cached."""
    return fp32.with_name(f"{fp32.stem}-{RECIPE}-{calibration.sha256[:16]}.onnx")


def quantize_int8(fp32: Path, out: Path, batches: Iterable[dict[str, torch.Tensor]],
                  kept: Callable = lambda graph: weighted_matmuls(graph)[1], method: str = "MinMax") -> Path:
    """Write the static int8 graph of ``fp32`` to ``out`` (atomically), calibrated on the padded token
    ``batches`` (:mod:`dretriever.token_batches`). ``kept(graph)`` names the MatMuls left in fp32 and ``method``
    is the calibration method (the recipe's by default; ``eval/probe_int8.py`` tries others)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, names: list[str]):
            self.it = (feed(names, b) for b in batches)

        def get_next(self):
            return next(self.it, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        fp32_matmuls = kept(graph)
        weights = {w.name for w in graph.initializer}
        names = [i.name for i in graph.input if i.name not in weights]
        quantize_static(str(prepared), str(quantised), Reader(names), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                        nodes_to_exclude=fp32_matmuls, calibrate_method=getattr(CalibrationMethod, method))
        os.replace(quantised, out)
    return out
