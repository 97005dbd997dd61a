"""Precomputed embeddings (``data/embeddings.py``) as a :class:`~dretriever.index.build.ShardedSource`:
``dretriever index import`` builds the same layout as ``index build`` (shards, manifest, doc store) from them.

Rows go to shard ``crc32(id) % shards``, so a repeated id always meets its first copy in one shard's doc
store and is refused there, with both rows named.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..data.embeddings import EmbeddingReader
from .build import Batch, ShardedSource


def embedding_source(reader: EmbeddingReader, num_shards: int) -> ShardedSource:
    origin = str(reader.ids_path or reader.path)

    def batches():
        for b in reader.batches():
            shards = np.fromiter((zlib.crc32(i.encode("utf-8")) % num_shards for i in b.ids), dtype=np.int64,
                                 count=len(b.ids))
            rows = np.asarray(b.lines) if b.lines else np.arange(b.first_row, b.first_row + len(b.ids))
            yield Batch(shards, b.ids, b.docs, b.vectors, origin=origin, rows=rows)

    description = {**reader.describe(), "sharding": "crc32(id) % shards"}
    return ShardedSource(num_shards, batches, description, dim=reader.dim,
                         locate=lambda docid: (docid, reader.locate(docid)))
