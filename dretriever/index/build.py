"""Sharded, resumable building of Pyserini-format FAISS shards: one pass over the sources, chunk-level resume.

Layout of an index folder::

    manifest.json             encoder settings + fingerprint, faiss factory, per-shard state, sizes and sha256
    trained.index             (IVF/PQ factories only) the empty index trained once on a sample across shards
    calibration.jsonl         (backend onnx-int8 only) the passages its int8 graph is calibrated on
    shard-00000/index         faiss.write_index  }  exactly what pyserini's FaissSearcher loads
    shard-00000/docid         one id per line     }
    shard-00000/docid.offsets byte offset of each id (docids are looked up memory-mapped, never listed)
    shard-00000/docs.sqlite   doc store: hits carry title, text, metadata
    shard-00000/vectors.f16   (optional) full vectors for exact re-ranking, memory-mapped at search time

A build runs in phases, each recorded in the manifest so that a killed build resumes where it stopped:

1. **stage**: one pass over the source routes every row to its shard's staging folder
   (``.shard-00000.partial/docs.sqlite``; precomputed vectors go to ``vectors.f32`` there). However many
   shards, the sources are read once (``manifest["source_passes"]`` counts the passes).
2. **train** (IVF/PQ): one quantizer trained on a sample drawn across all shards, shared by every shard.
3. **encode**: each shard's passages are read back from its staging doc store in chunks of ``chunk_docs``;
   each chunk's vectors are appended to ``vectors.f32`` and fsynced, then the manifest commits the chunk.
   A kill loses at most the chunk in flight; ``encode_runs`` records which run encoded which rows.
4. **finish**: the faiss index and docid files are written, the doc store gets its ``doc_id`` and filter
   columns (``docstore.finalize_docstore``), checksums are taken, the staging folder renamed to
   ``shard-NNNNN`` and the shard marked done. A rerun skips done shards.

Partial work lives only in dot-folders ending ``.partial`` or ``.tmp-PID`` and is never marked done.
A build ends by logging its wall time per stage (``dretriever.stages``: read, write, spool, tokenize, encode,
index, checksum).
Under ``accelerate launch`` or ``torchrun``, rank 0 stages and trains; rank ``r`` of ``w`` then encodes
and finishes shards ``r, r+w, r+2w, ...``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..atomic import fsync_dir, sha256_file, write_text_atomic
from ..data.beir import Document
from ..errors import DataError, DretrieverError
from ..heap import trim_heap
from ..stages import StageClock, current, stage, staged_iter
from . import manifest as mf
from . import vectors as vf
from .docids import write_docids
from .docstore import FILENAME as DOCSTORE
from .docstore import DocStore, DocStoreWriter, DuplicateId, finalize_docstore
from .docstore import recover as recover_docstore

log = logging.getLogger(__name__)
TRAINED = "trained.index"
PARTIAL = ".partial"
FLUSH_ROWS = 2048  # rows buffered per shard while staging


@dataclass
class Batch:
    """Rows read from a source: ``ids[j]`` goes to shard ``shards[j]``; ``docs`` (text) and/or ``vectors``."""

    shards: np.ndarray
    ids: list[str]
    docs: list[Document | None]
    vectors: np.ndarray | None = None
    where: list[str] | None = None  # "file:line" of each row, for error messages ...
    origin: str | None = None  # ... or the file, with each row's 1-based row (line) number
    rows: np.ndarray | None = None

    def location(self, j: int):
        """Row ``j``'s place: ``"file:line"``, or ``(file, row)`` (formatted only if an error needs it)."""
        if self.where:
            return self.where[j]
        return (self.origin, int(self.rows[j])) if self.origin is not None else None


@dataclass
class ShardedSource:
    """A corpus read in one pass: ``batches()`` yields :class:`Batch` es routed to ``num_shards`` shards.

    ``dim`` is set when the rows carry precomputed vectors (an import). ``locate(row_id)`` is called only
    when a row id repeats: it returns the id to name in the error and where it first occurs (or None).
    """

    num_shards: int
    batches: Callable[[], Iterable[Batch]]
    description: dict  # recorded in the manifest; a rerun must describe the same source
    dim: int | None = None
    locate: Callable[[str], tuple[str, str | None]] | None = None

    @property
    def has_vectors(self) -> bool:
        return self.dim is not None


def corpus_source(corpus: dict[str, Document], num_shards: int, description: dict,
                  batch_rows: int = 1024) -> ShardedSource:
    """Split an in-memory corpus into ``num_shards`` contiguous, nearly equal shards."""
    if num_shards < 1:
        raise DretrieverError(f"shards: must be at least 1, got {num_shards}")
    ids = list(corpus)
    bounds = np.linspace(0, len(ids), num_shards + 1).astype(int)
    shard_of = np.repeat(np.arange(num_shards), np.diff(bounds))

    def batches():
        for a in range(0, len(ids), batch_rows):
            chunk = ids[a:a + batch_rows]
            yield Batch(shard_of[a:a + len(chunk)], chunk, [corpus[d] for d in chunk])

    return ShardedSource(num_shards, batches, {**description, "num_docs": len(ids)})


ENCODER_SETTINGS = ("pooling", "normalize", "query_prefix", "doc_prefix", "query_max_length", "doc_max_length")


def encoder_info(encoder, model: str) -> dict:
    c = encoder.config
    info = {
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
    if getattr(encoder, "backend", "torch") != "torch":  # absent: torch (the manifests written before backends)
        info["backend"] = encoder.backend
    if info.get("backend") == "onnx-int8":  # the passages its int8 graph is calibrated on, kept with the index
        if encoder.calibration is None:
            raise DretrieverError("backend: 'onnx-int8' needs calibration passages drawn from the corpus")
        info["calibration"] = encoder.calibration.describe()
    return info


def needs_training(factory: str, dim: int) -> bool:
    return not faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT).is_trained


def check_factory(factory: str, dim: int) -> None:
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise DretrieverError(f"factory: faiss cannot build {factory!r} for dimension {dim} "
                              f"({str(e).strip().splitlines()[-1]})") from None


def partial_dir(out: Path, i: int) -> Path:
    return out / f".{mf.shard_dir_name(i)}{PARTIAL}"


class _Dist:
    """Process rank/world from accelerate (or torchrun) when launched with it, else a single process."""

    def __init__(self):
        import torch
        from accelerate import PartialState

        # Under torchrun on a machine without an accelerator, accelerate joins the gloo group only when told
        # cpu=True; otherwise every process ran as rank 0 of 1 and built every shard.
        cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
        self.state = PartialState(cpu=cpu) if cpu else PartialState()
        self.rank, self.world = self.state.process_index, self.state.num_processes

    def barrier(self):
        if self.world > 1:
            self.state.wait_for_everyone()


@dataclass
class BuildSettings:
    factory: str = "Flat"
    batch_size: int = 64
    precision: str = "auto"
    chunk_docs: int = 512
    train_sample: int | None = None
    keep_vectors: str = "none"  # none | float16 | float32: full vectors kept beside the index (re-ranking)
    seed: int = 0
    progress: bool = True
    filter_keys: dict | None = None  # metadata keys -> int | float | str, typed indexed columns in the doc store
    trained_from: str | None = None  # reuse this trained.index (a datastore add: one quantizer for all shards)
    max_tokens: int | str | None = "auto"  # padded tokens per encoding batch (BiEncoder.encode)


def build_index(source: ShardedSource, encoder, out: str | Path, model: str | None, factory: str = "Flat",
                batch_size: int = 64, precision: str = "auto", chunk_docs: int = 512,
                train_sample: int | None = None, overwrite: bool = False, progress: bool = True,
                seed: int = 0, keep_vectors: str = "none", filter_keys: dict | None = None,
                trained_from: str | Path | None = None, max_tokens: int | str | None = "auto",
                builder: Callable[..., "Builder"] | None = None) -> dict:
    """Build (or resume with identical settings) the index of ``source`` in ``out``; returns the manifest.

    ``encoder`` encodes the rows' text; it may be ``None`` when the source carries vectors (an import),
    and ``model`` then names the encoder to record (or ``None``: the index serves vector queries only).
    ``builder`` makes the :class:`Builder` (``builder(source, encoder, out, model, settings)``; default: this
    machine's processes; ``ray/build.py`` gives one that runs on a Ray cluster).
    """
    settings = BuildSettings(factory, batch_size, precision, chunk_docs, train_sample, keep_vectors, seed, progress,
                             filter_keys or {}, str(trained_from) if trained_from else None, max_tokens)
    return (builder or Builder)(source, encoder, Path(out), model, settings).run(overwrite)


class Builder:
    def __init__(self, source: ShardedSource, encoder, out: Path, model: str | None, settings: BuildSettings):
        self.source, self.encoder, self.out, self.s = source, encoder, out, settings
        if settings.keep_vectors != "none":
            vf.filename(settings.keep_vectors)  # validates the name
        if settings.chunk_docs < 1:
            raise DretrieverError(f"chunk_docs: must be at least 1, got {settings.chunk_docs}")
        self.dist = _Dist()
        if encoder is not None:
            encoder.to(self.dist.state.device)
            self.info = encoder_info(encoder, model)
            self.dim = encoder.dim
            if source.has_vectors and source.dim != self.dim:
                raise DretrieverError(f"the vectors have dimension {source.dim} but the model {model} gives {self.dim}")
        elif source.has_vectors:
            self.info, self.dim = None, source.dim
        else:
            raise DretrieverError("an encoder is needed to build an index from text")
        check_factory(settings.factory, self.dim)
        self.run_id = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:12]}"  # one per build run

    # ------------------------------------------------------------------ driver
    def run(self, overwrite: bool) -> dict:
        if current() is not None:  # a caller (a benchmark) holds the clock
            return self._run(overwrite)
        with StageClock() as clock:
            manifest = self._run(overwrite)
        log.info("index build: %.1f s: %s", clock.wall, clock.summary())
        return manifest

    def _run(self, overwrite: bool) -> dict:
        d = self.dist
        log.info("index build: world size %d (this is rank %d)", d.world, d.rank)
        if d.rank == 0:
            self._prepare(overwrite)
            self._stage_if_needed()
            if needs_training(self.s.factory, self.dim) and not mf.read_manifest(self.out)["faiss"]["trained_index"]:
                self._train()
        d.barrier()
        self._build_shards(mf.read_manifest(self.out))
        d.barrier()
        if d.rank == 0:
            manifest = mf.read_manifest(self.out)
            unfinished = [e["dir"] for e in manifest["shards"] if e["state"] != "done"]
            if unfinished:
                raise DretrieverError(f"{self.out}: shards not finished: {', '.join(unfinished)}")
            mf.update_manifest(self.out, lambda m: m.update(complete=True))
        d.barrier()
        return mf.read_manifest(self.out)

    def _build_shards(self, manifest: dict) -> None:
        """Encode and finish the shards not done yet: rank ``r`` of ``w`` takes shards ``r, r+w, ...``
        (``ray/build.py`` overrides this with a Ray Data pipeline)."""
        d = self.dist
        mine = range(d.rank, self.source.num_shards, d.world)
        for i in tqdm(mine, desc="shards", unit="shard", disable=not self.s.progress or d.rank != 0):
            entry = manifest["shards"][i]
            if entry["state"] == "done":
                log.info("%s: done, skipped", entry["dir"])
                continue
            self._encode_shard(i)
            finish_shard(self.out, i, self.dim, self.s)

    # ------------------------------------------------------------------ phases
    def _prepare(self, overwrite: bool) -> None:
        out = self.out
        if overwrite and out.exists():
            shutil.rmtree(out)
        if (out / mf.MANIFEST).is_file():
            old = mf.read_manifest(out)
            if old.get("generation", 0) > 0:
                raise DretrieverError(f"{out}: this datastore has been changed since its build (generation "
                                      f"{old['generation']}); change it with `dretriever datastore add/delete`, "
                                      "or pass --overwrite to rebuild it")
            for key, mine, theirs in (("encoder", self.info, old["encoder"]),
                                      ("faiss factory", self.s.factory, old["faiss"]["factory"]),
                                      ("source", self.source.description, old["source"]),
                                      ("num_shards", self.source.num_shards, old["num_shards"]),
                                      ("keep_vectors", self.s.keep_vectors, old.get("keep_vectors", "none")),
                                      ("filter_keys", self.s.filter_keys or {}, old.get("filter_keys") or {})):
                if mine != theirs:
                    raise DretrieverError(
                        f"{out}: an index built with a different {key} is here ({theirs!r} vs {mine!r}); "
                        "pass --overwrite to replace it or choose another output folder")
            for stale in out.glob(".*.tmp-*"):  # partial work of a killed run; no process of this run writes yet
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            self._recheck_done_shards(old)
            self._store_calibration()
            log.info("%s: resuming (%d of %d shards done)", out,
                     sum(e["state"] == "done" for e in mf.read_manifest(out)["shards"]), old["num_shards"])
            return
        if out.exists() and any(out.iterdir()):
            raise DretrieverError(f"{out}: folder exists, is not empty and holds no manifest.json")
        out.mkdir(parents=True, exist_ok=True)
        manifest = mf.new_manifest(self.info, self.s.factory, self.source.num_shards, self.source.description)
        manifest.update(dim=self.dim, keep_vectors=self.s.keep_vectors, filter_keys=self.s.filter_keys or {})
        if self.s.trained_from:  # an add to a datastore: its quantizer, not a new one
            shutil.copyfile(self.s.trained_from, out / TRAINED)
            manifest["faiss"].update(trained_index=TRAINED, train_sample=None)
        mf.write_manifest(out, manifest)
        self._store_calibration()

    def _store_calibration(self) -> None:
        """``onnx-int8``: the calibration passages beside the manifest that names them (the query side reads them)."""
        if self.info is not None and "calibration" in self.info:
            write_text_atomic(self.out / self.info["calibration"]["file"], self.encoder.calibration.lines())

    def _recheck_done_shards(self, manifest: dict) -> None:
        """A done shard whose files fail their checksums is rebuilt: back to staging (or restaged)."""
        for i, entry in enumerate(manifest["shards"]):
            final, partial = self.out / entry["dir"], partial_dir(self.out, i)
            if entry["state"] != "done":
                if final.is_dir() and not partial.exists():  # killed between the rename and the commit
                    os.replace(final, partial)
                elif final.is_dir():
                    shutil.rmtree(final)
                continue
            if mf.shard_is_done(self.out, entry, full=True):
                shutil.rmtree(partial, ignore_errors=True)
                continue
            log.warning("%s: files do not match the manifest's checksums; rebuilding the shard", entry["dir"])
            shutil.rmtree(partial, ignore_errors=True)
            if final.is_dir():
                os.replace(final, partial)
            staged_ok = (partial / DOCSTORE).is_file() and sha256_file(partial / DOCSTORE) == entry["staged_sha256"]
            for name in os.listdir(partial) if partial.is_dir() else []:
                if name != DOCSTORE:
                    os.unlink(partial / name)

            def demote(m, i=i, staged_ok=staged_ok):
                e = m["shards"][i]
                if staged_ok and not self.source.has_vectors:
                    e.update(state="staged", encoded=0, encode_runs=[], sha256=None, bytes=None, finished_at=None)
                else:
                    e.update(mf.new_shard_entry(i))
            mf.update_manifest(self.out, demote)

    def _stage_if_needed(self) -> None:
        manifest = mf.read_manifest(self.out)
        todo = [i for i, e in enumerate(manifest["shards"]) if e["state"] == "pending"
                or (e["state"] in ("staged", "encoding") and not self._staging_intact(i, e))]
        if todo:
            self._stage(todo)

    def _staging_intact(self, i: int, entry: dict) -> bool:
        store = partial_dir(self.out, i) / DOCSTORE
        if store.is_file():
            recover_docstore(store)  # a kill while finish_shard's finalize committed: back to the staged rows
        return store.is_file() and store.stat().st_size == entry["staged_bytes"]

    def _stage(self, todo: list[int]) -> None:
        """The one pass over the source: every row of a shard in ``todo`` goes to its staging folder."""
        out, want = self.out, set(todo)
        mf.update_manifest(out, lambda m: m.update(source_passes=m.get("source_passes", 0) + 1))
        for i in todo:
            shutil.rmtree(partial_dir(out, i), ignore_errors=True)
            partial_dir(out, i).mkdir()
            mf.update_manifest(out, lambda m, i=i: m["shards"][i].update(mf.new_shard_entry(i)))
        writers = {i: DocStoreWriter(partial_dir(out, i) / DOCSTORE) for i in todo}
        appenders = ({i: vf.VectorAppender(partial_dir(out, i) / vf.WORK, self.dim, 0) for i in todo}
                     if self.source.has_vectors else {})
        buffers: dict[int, list] = {i: [] for i in todo}
        bar = tqdm(desc="read sources", unit="row", disable=not self.s.progress)
        for batch in staged_iter(self.source.batches(), "read"):
            for s in np.unique(batch.shards):
                s = int(s)
                if s not in want:
                    continue
                rows = np.flatnonzero(batch.shards == s)
                buffers[s].extend((batch.ids[j], batch.docs[j] if batch.docs else None, batch.location(j))
                                  for j in rows)
                with stage("write"):
                    if appenders:
                        appenders[s].append(batch.vectors[rows])
                    if len(buffers[s]) >= FLUSH_ROWS:
                        self._flush(writers[s], buffers[s])
            bar.update(len(batch.ids))
        bar.close()
        with stage("write"):
            for i in todo:
                self._flush(writers[i], buffers[i])
                writers[i].close()
                if appenders:
                    appenders[i].close()
                fsync_dir(partial_dir(out, i))
        counts = {i: writers[i].count for i in todo}
        with stage("checksum"):
            sums = {i: sha256_file(partial_dir(out, i) / DOCSTORE) for i in todo}
        sizes = {i: (partial_dir(out, i) / DOCSTORE).stat().st_size for i in todo}

        def staged(m):
            for i in todo:
                m["shards"][i].update(state="staged", num_docs=counts[i], staged_sha256=sums[i],
                                      staged_bytes=sizes[i], encoded=counts[i] if appenders else 0)
        mf.update_manifest(out, staged)
        log.info("staged %d rows into %d shards in one pass", sum(counts.values()), len(todo))

    def _flush(self, writer: DocStoreWriter, buffer: list) -> None:
        try:
            writer.add((docid, doc) for docid, doc, _ in buffer)
        except DuplicateId as e:
            where = next((w for d, _, w in reversed(buffer) if d == e.docid), None)
            where = f"{where[0]}:{where[1]}" if isinstance(where, tuple) else where
            name, first = self.source.locate(e.docid) if self.source.locate else (e.docid, None)
            message = f"duplicate document id {name!r}" + (f" (first at {first})" if first and first != where else "")
            if where and ":" in where:
                path, _, line = where.rpartition(":")
                raise DataError(path, message, int(line) if line.isdigit() else None) from None
            raise DretrieverError(message) from None
        buffer.clear()

    def _train(self) -> None:
        """Train the empty index once, on a sample drawn uniformly across all shards (seeded)."""
        out, factory = self.out, self.s.factory
        manifest = mf.read_manifest(out)
        probe = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        nlist = getattr(faiss.extract_index_ivf(probe), "nlist", 256) if "IVF" in factory else 256
        counts = np.array([e["num_docs"] for e in manifest["shards"]])
        total = int(counts.sum())
        size = min(self.s.train_sample or max(50 * nlist, 10_000), total)
        picks = np.sort(np.random.default_rng(self.s.seed).choice(total, size=size, replace=False))
        starts = np.concatenate([[0], np.cumsum(counts)])
        parts = []
        for i in range(len(counts)):
            local = picks[(picks >= starts[i]) & (picks < starts[i + 1])] - starts[i]
            if not len(local):
                continue
            if self.source.has_vectors:
                parts.append(np.asarray(vf.open_vectors(partial_dir(out, i) / vf.WORK, self.dim)[local]))
            else:
                store = DocStore(partial_dir(out, i) / DOCSTORE)
                texts = [doc.contents for _, doc in store.at(local.tolist())]
                store.close()
                parts.append(self.encoder.encode_docs(texts, batch_size=self.s.batch_size, precision=self.s.precision,
                                                      progress=self.s.progress, max_tokens=self.s.max_tokens))
        sample = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        log.info("training %s on %d vectors sampled across %d shards", factory, len(sample), len(counts))
        with stage("index"):
            probe.train(sample)
        tmp = out / f".{TRAINED}.tmp-{os.getpid()}"
        faiss.write_index(probe, str(tmp))
        os.replace(tmp, out / TRAINED)
        mf.update_manifest(out, lambda m: m["faiss"].update(trained_index=TRAINED, train_sample=len(sample)))

    def _encode_shard(self, i: int) -> None:
        """Encode the shard's staged rows chunk by chunk; each chunk is committed before the next starts."""
        out = self.out
        entry = mf.read_manifest(out)["shards"][i]
        n, done = entry["num_docs"], entry["encoded"]
        if done >= n:
            return
        part = partial_dir(out, i)
        store = DocStore(part / DOCSTORE)
        appender = vf.VectorAppender(part / vf.WORK, self.dim, done)
        bar = tqdm(total=n, initial=done, desc=f"encode {entry['dir']}", unit="passage", leave=False,
                   disable=not self.s.progress)
        for start in range(done, n, self.s.chunk_docs):
            stop = min(start + self.s.chunk_docs, n)
            with stage("spool"):  # the staged rows read back (the price of one pass over the sources)
                rows = list(store.rows(start, stop))
            vectors = self.encoder.encode_docs([doc.contents for _, doc in rows], batch_size=self.s.batch_size,
                                               precision=self.s.precision, max_tokens=self.s.max_tokens)
            with stage("write"):
                appender.append(vectors)
                appender.commit()
                mf.update_manifest(out, lambda m, stop=stop, start=start: _commit_chunk(m["shards"][i], start, stop,
                                                                                         self.run_id))
            bar.update(stop - start)
            trim_heap()  # else freed chunk memory fragments the heap and the peak creeps up chunk by chunk
        bar.close()
        appender.close()
        store.close()
def finish_shard(out: Path, i: int, dim: int, settings: BuildSettings) -> None:
    """Write shard ``i``'s faiss index, docids and doc-store columns from its encoded vectors, take checksums,
    rename the staging folder to ``shard-NNNNN`` and mark the shard done. Idempotent: a rerun after a kill at
    any point (even after the rename) finishes the shard (a Ray task is retried this way)."""
    out = Path(out)
    part, name = partial_dir(out, i), mf.shard_dir_name(i)
    entry = mf.read_manifest(out)["shards"][i]
    if entry["state"] == "done":
        return
    if not part.is_dir() and (out / name).is_dir():  # killed between the rename and the commit
        os.replace(out / name, part)
    for stale in part.glob(".*.tmp-*"):  # a killed attempt's half-written file
        stale.unlink()
    (part / vf.WORK).touch()  # a shard that got no passages (few documents, many shards) has none encoded
    vectors = vf.open_vectors(part / vf.WORK, dim)
    if len(vectors) != entry["num_docs"]:
        raise DretrieverError(f"{part}: {len(vectors)} vectors for {entry['num_docs']} staged rows")
    if (out / TRAINED).is_file():
        index = faiss.read_index(str(out / TRAINED))
    else:
        index = faiss.index_factory(dim, settings.factory, faiss.METRIC_INNER_PRODUCT)
    with stage("index"):
        for start in range(0, len(vectors), 65536):
            index.add(np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32))
    with stage("write"):
        tmp = part / f".index.tmp-{os.getpid()}"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, part / "index")
        del index
        store = DocStore(part / DOCSTORE)
        write_docids(part, (docid for docid, _ in store.rows()))
        store.close()
        finalize_docstore(part / DOCSTORE, settings.filter_keys)
        files = list(mf.SHARD_FILES)
        if settings.keep_vectors != "none":
            kept = vf.filename(settings.keep_vectors)
            if kept != vf.WORK:
                vf.convert(part / vf.WORK, part / kept, dim)
            files.append(kept)
        fsync_dir(part)
    with stage("checksum"):
        sums = {f: sha256_file(part / f) for f in files}
    sizes = {f: (part / f).stat().st_size for f in files}
    final = out / name
    if final.exists():  # a stale shard from a crashed run, never marked done
        shutil.rmtree(final)
    os.replace(part, final)
    fsync_dir(out)

    def mark_done(m):
        m["shards"][i].update(state="done", sha256=sums, bytes=sizes,
                              vectors=vf.filename(settings.keep_vectors) if settings.keep_vectors != "none" else None,
                              finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    mf.update_manifest(out, mark_done)
    if vf.WORK not in files and (final / vf.WORK).exists():
        os.unlink(final / vf.WORK)



def _commit_chunk(entry: dict, start: int, stop: int, run_id: str) -> None:
    runs = entry.setdefault("encode_runs", [])
    if runs and runs[-1]["run"] == run_id and runs[-1]["to"] == start:
        runs[-1]["to"] = stop
    else:
        runs.append({"run": run_id, "from": start, "to": stop})
    entry.update(state="encoding", encoded=stop)


def iter_batches(rows: Iterator[tuple[int, str, Document | None, str | None]], size: int = 1024) -> Iterator[Batch]:
    """Group ``(shard, id, doc, where)`` rows into batches."""
    buf: list = []
    for row in rows:
        buf.append(row)
        if len(buf) == size:
            yield _batch(buf)
            buf = []
    if buf:
        yield _batch(buf)


def _batch(rows: list) -> Batch:
    return Batch(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), [r[1] for r in rows],
                 [r[2] for r in rows], where=[r[3] for r in rows])
