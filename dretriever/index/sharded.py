"""Open a built index and search all its shards, merging their top-k exactly as one index would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import DretrieverError
from . import manifest as mf
from .docstore import FILENAME as DOCSTORE
from .docstore import DocStore


@dataclass
class Shard:
    dir: Path
    index: faiss.Index
    docids: list[str]
    store: DocStore


class ShardedIndex:
    """All shards of a complete index. ``search`` takes query vectors and returns merged top-k."""

    def __init__(self, root: Path, manifest: dict, shards: list[Shard]):
        self.root, self.manifest, self.shards = root, manifest, shards

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "ShardedIndex":
        """Load every shard; with ``verify`` the files must match the manifest's checksums."""
        root = Path(root)
        manifest = mf.read_manifest(root)
        if not manifest.get("complete"):
            raise DretrieverError(f"{root}: the index is incomplete (an interrupted build?); rerun the build to finish it")
        shards = []
        for entry in manifest["shards"]:
            d = root / entry["dir"]
            ok = mf.shard_is_done(root, entry) if verify else entry["state"] == "done"
            if not ok:
                raise DretrieverError(f"{d}: shard files are missing or do not match the manifest's checksums")
            docids = (d / "docid").read_text(encoding="utf-8").splitlines()
            index = faiss.read_index(str(d / "index"))
            if index.ntotal != len(docids):
                raise DretrieverError(f"{d}: index holds {index.ntotal} vectors but docid lists {len(docids)} ids")
            shards.append(Shard(d, index, docids, DocStore(d / DOCSTORE)))
        return cls(root, manifest, shards)

    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["dim"])

    def __len__(self) -> int:
        return sum(s.index.ntotal for s in self.shards)

    def set_search_params(self, **params) -> None:
        """Set faiss parameters on every shard, e.g. ``nprobe=32`` (IVF) or ``efSearch=128`` (HNSW)."""
        space = faiss.ParameterSpace()
        for shard in self.shards:
            for key, value in params.items():
                space.set_index_parameter(shard.index, key, value)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
        """Top-``k`` over all shards for each query row.

        Returns ``scores`` of shape (n, k') and, per query, ``(shard, position)`` pairs, best first.
        Ties keep shard order then in-shard order, which is what a single index over the
        concatenated shards returns.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise DretrieverError(f"query vectors must have shape (n, {self.dim}), got {queries.shape}")
        all_scores, all_ids, all_shards = [], [], []
        for s, shard in enumerate(self.shards):
            kk = min(k, shard.index.ntotal)
            if kk == 0:  # an empty shard (a tiny corpus split by document id)
                continue
            scores, ids = shard.index.search(queries, kk)
            all_scores.append(scores)
            all_ids.append(ids)
            all_shards.append(np.full_like(ids, s))
        scores = np.concatenate(all_scores, axis=1)
        ids = np.concatenate(all_ids, axis=1)
        shard_of = np.concatenate(all_shards, axis=1)
        scores = np.where(ids < 0, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, order, axis=1)
        top_ids = np.take_along_axis(ids, order, axis=1)
        top_shards = np.take_along_axis(shard_of, order, axis=1)
        hits = [[(int(sh), int(i)) for sh, i in zip(rs, ri) if i >= 0] for rs, ri in zip(top_shards, top_ids)]
        return top_scores, hits

    def docid(self, shard: int, position: int) -> str:
        return self.shards[shard].docids[position]

    def texts(self, shard: int, docids: list[str]) -> dict[str, dict]:
        return self.shards[shard].store.get_many(docids)
