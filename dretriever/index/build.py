"""Sharded, resumable encoding of a corpus into Pyserini-format FAISS shards.

Layout of an index folder::

    manifest.json          encoder settings + fingerprint, faiss factory, per-shard state and sha256
    trained.index          (IVF/PQ factories only) the empty index trained once on a sample across shards
    shard-00000/index      faiss.write_index  }  exactly what pyserini's FaissSearcher loads
    shard-00000/docid      one id per line     }
    shard-00000/docs.sqlite                     doc store: hits carry title, text, metadata

Each shard is written in a temporary folder and renamed into place, then marked done in the manifest
with its checksums. A rerun skips done shards. Under ``accelerate launch`` process ``r`` of ``w`` builds
shards ``r, r+w, r+2w, ...``.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..data.beir import Document
from ..encoder import BiEncoder
from ..errors import DretrieverError
from . import manifest as mf
from .atomic import fsync_dir
from .docstore import FILENAME as DOCSTORE
from .docstore import DocStoreWriter

log = logging.getLogger(__name__)
TRAINED = "trained.index"


@dataclass
class ShardedSource:
    """A corpus split into shards: ``docs(i)`` yields ``(docid, Document)`` for shard ``i``, same order each call."""

    num_shards: int
    docs: Callable[[int], Iterable[tuple[str, Document]]]
    description: dict  # recorded in the manifest; a rerun must describe the same source


def corpus_source(corpus: dict[str, Document], num_shards: int, description: dict) -> ShardedSource:
    """Split an in-memory corpus into ``num_shards`` contiguous, nearly equal shards."""
    if num_shards < 1:
        raise DretrieverError(f"shards: must be at least 1, got {num_shards}")
    ids = list(corpus)
    bounds = np.linspace(0, len(ids), num_shards + 1).astype(int)

    def docs(i: int):
        return ((d, corpus[d]) for d in ids[bounds[i]:bounds[i + 1]])

    return ShardedSource(num_shards, docs, {**description, "num_docs": len(ids)})


def encoder_info(encoder: BiEncoder, model: str) -> dict:
    c = encoder.config
    return {
        "model": os.path.abspath(model) if os.path.isdir(model) else model,
        "fingerprint": encoder.fingerprint(),
        "dim": encoder.dim,
        "pooling": c.pooling,
        "normalize": c.normalize,
        "query_prefix": c.query_prefix,
        "doc_prefix": c.doc_prefix,
        "query_max_length": c.query_max_length,
        "doc_max_length": c.doc_max_length,
        "tied": encoder.tied,
    }


def needs_training(factory: str, dim: int) -> bool:
    return not faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT).is_trained


def _chunks(it: Iterable, size: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(islice(it, size)):
        yield chunk


class _Dist:
    """Process rank/world from accelerate when launched with it, else a single process."""

    def __init__(self):
        from accelerate import PartialState

        self.state = PartialState()
        self.rank, self.world = self.state.process_index, self.state.num_processes

    def barrier(self):
        if self.world > 1:
            self.state.wait_for_everyone()


def build_index(source: ShardedSource, encoder: BiEncoder, out: str | Path, model: str, factory: str = "Flat",
                batch_size: int = 64, precision: str = "auto", chunk_docs: int = 512,
                train_sample: int | None = None, overwrite: bool = False, progress: bool = True,
                seed: int = 0) -> dict:
    """Encode ``source`` into ``out``; resumes a partial build with identical settings. Returns the manifest."""
    out = Path(out)
    dist = _Dist()
    encoder.to(dist.state.device)
    info = encoder_info(encoder, model)
    if dist.rank == 0:
        _prepare(out, info, factory, source, overwrite)
    dist.barrier()
    manifest = mf.read_manifest(out)

    if needs_training(factory, encoder.dim) and not manifest["faiss"]["trained_index"]:
        if dist.rank == 0:
            _train(source, encoder, out, factory, batch_size, precision, train_sample, seed, progress)
        dist.barrier()
        manifest = mf.read_manifest(out)

    mine = range(dist.rank, source.num_shards, dist.world)
    for i in tqdm(mine, desc="shards", unit="shard", disable=not progress or dist.rank != 0):
        entry = manifest["shards"][i]
        if mf.shard_is_done(out, entry):
            log.info("%s: done (checksums match), skipped", entry["dir"])
            continue
        _build_shard(source, i, encoder, out, factory, batch_size, precision, chunk_docs, progress)

    dist.barrier()
    if dist.rank == 0:
        manifest = mf.read_manifest(out)
        unfinished = [e["dir"] for e in manifest["shards"] if not mf.shard_is_done(out, e)]
        if unfinished:
            raise DretrieverError(f"{out}: shards not finished: {', '.join(unfinished)}")
        manifest = mf.update_manifest(out, lambda m: m.update(complete=True))
    dist.barrier()
    return mf.read_manifest(out)


def _prepare(out: Path, info: dict, factory: str, source: ShardedSource, overwrite: bool) -> None:
    if overwrite and out.exists():
        shutil.rmtree(out)
    if (out / mf.MANIFEST).is_file():
        old = mf.read_manifest(out)
        for key, mine, theirs in (("encoder", info, old["encoder"]), ("faiss factory", factory, old["faiss"]["factory"]),
                                  ("source", source.description, old["source"]),
                                  ("num_shards", source.num_shards, old["num_shards"])):
            if mine != theirs:
                raise DretrieverError(
                    f"{out}: an index built with a different {key} is here ({theirs!r} vs {mine!r}); "
                    "pass --overwrite to replace it or choose another output folder")
        for stale in out.glob(".*.tmp-*"):  # partial work of a killed run; no process of this run writes yet
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        log.info("%s: resuming (%d of %d shards done)", out,
                 sum(e["state"] == "done" for e in old["shards"]), old["num_shards"])
        return
    if out.exists() and any(out.iterdir()):
        raise DretrieverError(f"{out}: folder exists, is not empty and holds no manifest.json")
    out.mkdir(parents=True, exist_ok=True)
    mf.write_manifest(out, mf.new_manifest(info, factory, source.num_shards, source.description))


def _train(source, encoder, out, factory, batch_size, precision, train_sample, seed, progress) -> None:
    """Train the empty index once, on a sample drawn evenly across shards (reservoir per shard)."""
    probe = faiss.index_factory(encoder.dim, factory, faiss.METRIC_INNER_PRODUCT)
    nlist = getattr(faiss.extract_index_ivf(probe), "nlist", 256) if "IVF" in factory else 256
    size = train_sample or max(50 * nlist, 10_000)
    per_shard = -(-size // source.num_shards)
    rng = random.Random(seed)
    sample: list[str] = []
    for i in range(source.num_shards):
        reservoir: list[str] = []
        for n, (_, doc) in enumerate(source.docs(i)):
            if n < per_shard:
                reservoir.append(doc.contents)
            elif (j := rng.randint(0, n)) < per_shard:
                reservoir[j] = doc.contents
        sample += reservoir
    log.info("training %s on %d sampled documents", factory, len(sample))
    vectors = encoder.encode_docs(sample, batch_size=batch_size, precision=precision, progress=progress)
    probe.train(vectors)
    tmp = out / f".{TRAINED}.tmp-{os.getpid()}"
    faiss.write_index(probe, str(tmp))
    os.replace(tmp, out / TRAINED)
    mf.update_manifest(out, lambda m: m["faiss"].update(trained_index=TRAINED, train_sample=len(sample)))


def _build_shard(source, i, encoder, out, factory, batch_size, precision, chunk_docs, progress) -> None:
    name = mf.shard_dir_name(i)
    for stale in out.glob(f".{name}.tmp-*"):  # left by a killed run; only this process builds shard i
        shutil.rmtree(stale)
    tmp = out / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir()
    if (out / TRAINED).is_file():
        index = faiss.read_index(str(out / TRAINED))
    else:
        index = faiss.index_factory(encoder.dim, factory, faiss.METRIC_INNER_PRODUCT)
    store = DocStoreWriter(tmp / DOCSTORE)
    count = 0
    bar = tqdm(desc=name, unit="doc", disable=not progress, leave=False)
    with open(tmp / "docid", "w", encoding="utf-8") as ids_file:
        for chunk in _chunks(source.docs(i), chunk_docs):
            vectors = encoder.encode_docs([d.contents for _, d in chunk], batch_size=batch_size, precision=precision)
            index.add(vectors)
            for docid, _ in chunk:
                if "\n" in docid:
                    raise DretrieverError(f"document id {docid!r} contains a newline")
                ids_file.write(docid + "\n")
            store.add(chunk)
            count += len(chunk)
            bar.update(len(chunk))
        ids_file.flush()
        os.fsync(ids_file.fileno())
    bar.close()
    store.close()
    faiss.write_index(index, str(tmp / "index"))
    fsync_dir(tmp)
    sums = mf.shard_checksums(tmp)
    final = out / name
    if final.exists():  # a stale shard from a crashed run, never marked done
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(out)

    def mark_done(m):
        m["shards"][i].update(state="done", num_docs=count, sha256=sums,
                              finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    mf.update_manifest(out, mark_done)
