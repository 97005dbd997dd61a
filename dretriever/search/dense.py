"""Dense search over a sharded index, with the query encoder configured from the index's manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..autotune import query_encoder
from ..encoder import BiEncoder
from ..errors import DretrieverError
from ..heap import gc_paused
from ..index.build import ENCODER_SETTINGS as SETTINGS
from ..index.sharded import ShardedIndex
from ..quantize import Calibration
from .types import Run


def check_encoder(manifest: dict, encoder: BiEncoder, where: str | Path) -> None:
    """Refuse an encoder whose dimension or weights differ from those the index was built with."""
    built = manifest["encoder"]
    if built is None:
        raise DretrieverError(f"{where}: the index records no encoder (imported vectors); re-import with --model")
    if encoder.dim != built["dim"]:
        raise DretrieverError(f"{where}: index dimension is {built['dim']} but the model gives {encoder.dim}")
    fingerprint = encoder.fingerprint()
    if fingerprint != built["fingerprint"]:
        raise DretrieverError(
            f"{where}: the model's weights (fingerprint {fingerprint[:12]}) differ from those the index was "
            f"built with ({built['fingerprint'][:12]}, {built['model']})")


def index_calibration(built: dict, where: str | Path) -> Calibration:
    """The calibration passages an ``onnx-int8`` index was built with (checked against the manifest's sha256)."""
    if "calibration" not in built:
        raise DretrieverError(f"{where}: backend onnx-int8 needs the calibration passages of an index built with "
                              f"it; this one was built with {built.get('backend', 'torch')}")
    return Calibration.read(Path(where) / built["calibration"]["file"]).check(built["calibration"], where)


def encoder_for_index(manifest: dict, where: str | Path, model: str | None = None,
                      backend: str | None = None) -> BiEncoder:
    """Load the query encoder with exactly the index's settings (pooling, prefixes, lengths) and its inference
    backend (``backend`` overrides the one the index was built with)."""
    built = manifest["encoder"]
    if built is None and model is None:
        raise DretrieverError(f"{where}: the index was imported from vectors without naming their encoder, so it "
                              "cannot encode text queries; search it with query vectors, or re-import with --model")
    if built is None:
        raise DretrieverError(f"{where}: the index records no encoder, so {model} cannot be checked against it; "
                              "re-import the vectors with --model")
    backend = backend or built.get("backend", "torch")
    encoder = BiEncoder.from_pretrained(model or built["model"], backend=backend,
                                        calibration=index_calibration(built, where) if backend == "onnx-int8" else None,
                                        **{k: built[k] for k in SETTINGS})
    check_encoder(manifest, encoder, where)
    return encoder


def query_side(manifest: dict, where: str | Path, model: str | None = None, backend: str | None = None,
               precision: str = "auto", max_tokens: int | str | None = "auto") -> tuple[BiEncoder, int | str | None]:
    """The query encoder and token budget a searcher of this index uses: :func:`encoder_for_index`, then, where no
    ``backend`` was asked for, the fastest backend for this CPU (``autotune.py``), whose budget replaces an
    ``"auto"`` ``max_tokens``. One place for ``Retriever.load`` and the Ray app's query encoder."""
    encoder = encoder_for_index(manifest, where, model, backend)
    if backend is not None:
        return encoder, max_tokens
    encoder, budget = query_encoder(encoder, precision, (manifest["encoder"] or {}).get("backend", "torch"))
    return encoder, budget if max_tokens == "auto" else max_tokens


class DenseSearcher:
    """Batched query encoding (token-budget batches of length-sorted queries) + exact merge over shards."""

    def __init__(self, index: ShardedIndex, encoder: BiEncoder, batch_size: int = 128, precision: str = "auto",
                 max_tokens: int | str | None = "auto"):
        self.index, self.encoder = index, encoder
        self.batch_size, self.precision, self.max_tokens = batch_size, precision, max_tokens

    @classmethod
    def load(cls, root: str | Path, model: str | None = None, verify: bool = False, backend: str | None = None,
             **kw) -> "DenseSearcher":
        index = ShardedIndex.open(root, verify=verify)
        return cls(index, encoder_for_index(index.manifest, root, model, backend), **kw)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_queries(texts, batch_size=self.batch_size, precision=self.precision,
                                           max_tokens=self.max_tokens)

    def search(self, queries: dict[str, str], k: int = 1000) -> Run:
        qids = list(queries)
        found = self.index.search_arrays(self.encode([queries[q] for q in qids]), k)
        with gc_paused():
            rows = self.index.rows(*found)
            return {qid: [(docid, score) for docid, score, _ in row] for qid, row in zip(qids, rows)}
