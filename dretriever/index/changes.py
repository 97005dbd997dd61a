"""Changes to a built datastore without a rebuild: add, delete and compact, each published as a generation.

- **add** encodes only the new documents, with the datastore's reader fields, chunking, encoder (its weights'
  fingerprint must match: another encoder is refused), filter keys and kept-vector type, by the same
  :class:`~dretriever.index.build.Builder` as a build (one pass, chunk-level resume), into a work folder;
  an IVF datastore's quantizer is reused, so the shared coarse assignment still serves every shard. The new
  shards get the next shard numbers. A document id that is already live is *replaced*: its old passages are
  tombstoned in the same generation.
- **delete** tombstones every passage of the given document ids (found through the doc stores' indexed
  ``doc_id`` column); ids not live in the datastore are counted and reported, not an error.
- **compact** rewrites each shard with tombstones into a new shard folder without the deleted rows (IVF lists
  are copied code by code with renumbered ids, so IVF results do not change at all; Flat/HNSW vectors are
  reconstructed and re-added; 4-bit fast-scan IVF, whose lists are packed in blocks, is re-added from the kept
  vectors, so its codes are re-quantized from float16: build it with ``--keep_vectors``).

BM25 follows: its statistics (idf, average length) belong to the whole live corpus, so after an add or a delete
the Lucene index is rebuilt from the live doc-store rows into ``bm25.gNNNNNN/`` (equal to a fresh build's);
Lucene's own deletes would keep the deleted documents in the statistics until a merge, so they are not used.
Every change runs under the writer lock and the journal of ``index/generations.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from ..atomic import fsync_dir, sha256_file
from ..errors import DretrieverError
from . import generations as gen
from . import manifest as mf
from . import vectors as vf
from .build import ENCODER_SETTINGS, TRAINED, build_index
from .docids import write_docids
from .docstore import FILENAME as DOCSTORE
from .docstore import SCHEMA, DocStore, finalize_docstore
from .tombstones import read_tombstones, write_tombstones

log = logging.getLogger(__name__)


@dataclass
class ChangeReport:
    generation: int
    op: str
    added_documents: int = 0
    added_passages: int = 0
    replaced_documents: int = 0
    deleted_documents: int = 0
    deleted_passages: int = 0
    unknown_ids: int = 0
    unknown_sample: list[str] = field(default_factory=list)
    compacted_shards: int = 0
    live_passages: int = 0
    seconds: float = 0.0
    bm25_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _next_shard(manifest: dict) -> int:
    used = [int(e["dir"].split("-")[1]) for e in manifest["shards"]]
    return max(manifest.get("next_shard", 0), max(used, default=-1) + 1)


def _live_positions(root: Path, entry: dict, doc_ids: list[str]) -> tuple[dict[str, list[int]], np.ndarray]:
    """``doc_id -> live positions`` in the shard, and the shard's current tombstones."""
    deleted = read_tombstones(root / entry["dir"], entry.get("deleted"))
    store = DocStore(root / entry["dir"] / DOCSTORE)
    try:
        found = store.positions_of_documents(doc_ids)
    finally:
        store.close()
    dead = set(deleted.tolist())
    live = {d: [p for p in ps if p not in dead] for d, ps in found.items()}
    return {d: ps for d, ps in live.items() if ps}, deleted


def _tombstone(root: Path, manifest: dict, doc_ids: list[str], generation: int) -> tuple[set[str], int]:
    """Tombstone every live passage of ``doc_ids`` in ``manifest``'s shards (entries updated in place);
    returns the ids found live and the number of passages deleted."""
    found: set[str] = set()
    passages = 0
    if not doc_ids:
        return found, 0
    for entry in manifest["shards"]:
        live, deleted = _live_positions(root, entry, doc_ids)
        if not live:
            continue
        new = np.concatenate([deleted, np.asarray([p for ps in live.values() for p in ps], dtype=np.int64)])
        entry["deleted"] = write_tombstones(root / entry["dir"], generation, new)
        found |= set(live)
        passages += sum(len(ps) for ps in live.values())
    return found, passages


def _rebuild_bm25(root: Path, manifest: dict, report: ChangeReport) -> None:
    if not manifest.get("bm25"):
        return
    from .datastore import build_bm25_from_shards

    name = f"bm25.g{manifest['generation']:06d}"
    start = time.perf_counter()
    build_bm25_from_shards(root, manifest, name)
    manifest["bm25"] = name
    report.bm25_seconds = time.perf_counter() - start


def _finish_manifest(manifest: dict, journal: dict, report: ChangeReport) -> dict:
    manifest["generation"] = journal["generation"]
    manifest["num_shards"] = len(manifest["shards"])
    manifest["next_shard"] = _next_shard(manifest)
    manifest["changed_at"] = _now()
    summary = {k: v for k, v in report.to_dict().items() if v and k not in ("unknown_sample", "seconds")}
    manifest.setdefault("changes", []).append(summary)
    report.live_passages = sum(e["num_docs"] - (e.get("deleted") or {}).get("count", 0) for e in manifest["shards"])
    return manifest


def load_encoder(manifest: dict, model: str | None, encoder=None):
    """The datastore's document encoder with its recorded settings and inference backend; another encoder
    (``model``) is refused."""
    from ..encoder import BiEncoder

    built = manifest.get("encoder")
    if built is None:
        raise DretrieverError("the datastore records no encoder (imported vectors); it cannot encode new text")
    if encoder is None:
        encoder = BiEncoder.from_pretrained(model or built["model"], backend=built.get("backend", "torch"),
                                            **{k: built[k] for k in ENCODER_SETTINGS})
    model = model or built["model"]
    if encoder.dim != built["dim"] or encoder.fingerprint() != built["fingerprint"]:
        raise DretrieverError(
            f"model: {model} (dimension {encoder.dim}, fingerprint {encoder.fingerprint()[:12]}) is not the encoder "
            f"this datastore was built with ({built['model']}, dimension {built['dim']}, fingerprint "
            f"{built['fingerprint'][:12]}); an add must use the same encoder, or the new vectors would not be "
            "comparable: rebuild the datastore to change encoders")
    return encoder


# ---------------------------------------------------------------------------------------------------- add
def add_documents(root: str | Path, sources: list[str], fmt: str = "auto", shards: int = 1, model: str | None = None,
                  batch_size: int = 64, precision: str = "auto", chunk_docs: int = 512, progress: bool = True,
                  keep: int = gen.KEEP, wait: bool = False, abort_pending: bool = False, encoder=None) -> ChangeReport:
    """Add (or replace) the documents of ``sources``; returns what changed."""
    from .datastore import DatastoreArgs, build_datastore

    root = Path(root)
    start = time.perf_counter()
    if shards < 1:
        raise DretrieverError(f"shards: must be at least 1, got {shards}")
    args = {"sources": [str(Path(s).resolve()) for s in sources], "format": fmt, "shards": shards}
    encoder = load_encoder(mf.read_manifest(root), model, encoder)  # refused before anything is written
    with gen.writer_lock(root, wait):
        journal, base = gen.begin(root, "add", args, abort_pending)
        report = ChangeReport(journal["generation"], "add")
        if journal["phase"] == "published":
            gen.finish(root, journal["generation"], keep)
            return report
        src = base["source"]
        if "chunking" not in src:
            raise DretrieverError(f"{root}: not a datastore (built by `dretriever index build/import`); "
                                  "only datastores take adds")
        work = gen.work_dir(root, journal["generation"])
        if journal["phase"] == "start":
            chunking = src["chunking"]
            seg_args = DatastoreArgs(
                sources=list(sources), output=str(work), model=base["encoder"]["model"], shards=shards,
                factory=base["faiss"]["factory"], format=fmt, id_field=src["fields"]["id"],
                text_field=src["fields"]["text"], title_field=src["fields"]["title"], chunking=chunking["mode"],
                chunk_size=chunking["size"], chunk_overlap=chunking["overlap"], batch_size=batch_size,
                precision=precision, backend=getattr(encoder, "backend", "torch"), chunk_docs=chunk_docs,
                keep_vectors=base.get("keep_vectors", "none"),
                filter_keys=",".join(f"{k}:{t}" for k, t in (base.get("filter_keys") or {}).items()),
                progress=progress)
            trained = root / TRAINED if base["faiss"].get("trained_index") else None
            segment = build_datastore(seg_args, encoder, trained_from=trained)
            segment["encoder"] = base["encoder"]  # same weights (checked); the recorded path stays the datastore's
            first = _next_shard(base)
            journal.update(phase="commit", segment=segment["shards"], first_shard=first)
            gen.write_journal(root, journal)
        # commit: move the new shards in (idempotent), tombstone replaced documents, BM25, publish
        manifest = base
        new_entries = []
        for j, entry in enumerate(journal["segment"]):
            name = mf.shard_dir_name(journal["first_shard"] + j)
            if (work / entry["dir"]).is_dir():
                if (root / name).exists():  # a half-moved earlier attempt (cannot happen with rename, but be sure)
                    shutil.rmtree(root / name)
                os.replace(work / entry["dir"], root / name)
                fsync_dir(root)
            elif not (root / name).is_dir():
                raise DretrieverError(f"{root / name}: missing; the pending add's work is lost, rerun with "
                                      "--abort_pending true and add again")
            new_entries.append({**entry, "dir": name})
        doc_ids: set[str] = set()
        for entry in new_entries:
            store = DocStore(root / entry["dir"] / DOCSTORE)
            doc_ids |= store.document_ids()
            report.added_passages += len(store)
            store.close()
        replaced, _ = _tombstone(root, manifest, sorted(doc_ids), journal["generation"])
        report.added_documents, report.replaced_documents = len(doc_ids), len(replaced)
        manifest["shards"] = manifest["shards"] + new_entries
        _finish_manifest(manifest, journal, report)
        _rebuild_bm25(root, manifest, report)
        manifest["changes"][-1]["bm25_seconds"] = round(report.bm25_seconds, 2)
        gen.publish(root, manifest, keep)
    report.seconds = time.perf_counter() - start
    log.info("add: generation %d: %d documents (%d passages) added, %d replaced, in %.1f s (BM25 %.1f s)",
             report.generation, report.added_documents, report.added_passages, report.replaced_documents,
             report.seconds, report.bm25_seconds)
    return report


# ------------------------------------------------------------------------------------------------- delete
def read_ids(path: str | Path) -> list[str]:
    from ..errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "ids file not found")
    ids, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        d = line.strip()
        if d and d not in seen:
            seen.add(d)
            ids.append(d)
    return ids


def delete_documents(root: str | Path, ids_file: str | Path, keep: int = gen.KEEP, wait: bool = False,
                     abort_pending: bool = False) -> ChangeReport:
    """Tombstone every passage of the documents named in ``ids_file`` (one id per line)."""
    root = Path(root)
    start = time.perf_counter()
    ids = read_ids(ids_file)
    args = {"ids": str(Path(ids_file).resolve()), "sha256": sha256_file(ids_file)}
    with gen.writer_lock(root, wait):
        journal, base = gen.begin(root, "delete", args, abort_pending)
        report = ChangeReport(journal["generation"], "delete")
        if journal["phase"] == "published":
            gen.finish(root, journal["generation"], keep)
            return report
        manifest = base
        found, passages = _tombstone(root, manifest, ids, journal["generation"])
        report.deleted_documents, report.deleted_passages = len(found), passages
        unknown = [d for d in ids if d not in found]
        report.unknown_ids, report.unknown_sample = len(unknown), unknown[:10]
        if not found:  # nothing to change: no new generation
            (root / gen.JOURNAL).unlink(missing_ok=True)
            report.generation = base.get("generation", 0)
            report.live_passages = sum(e["num_docs"] - (e.get("deleted") or {}).get("count", 0)
                                       for e in base["shards"])
            return report
        _finish_manifest(manifest, journal, report)
        _rebuild_bm25(root, manifest, report)
        manifest["changes"][-1]["bm25_seconds"] = round(report.bm25_seconds, 2)
        gen.publish(root, manifest, keep)
    report.seconds = time.perf_counter() - start
    log.info("delete: generation %d: %d documents (%d passages) deleted, %d ids unknown, in %.1f s",
             report.generation, report.deleted_documents, report.deleted_passages, report.unknown_ids, report.seconds)
    return report


# ------------------------------------------------------------------------------------------------ compact
def compact(root: str | Path, keep: int = gen.KEEP, wait: bool = False, abort_pending: bool = False) -> ChangeReport:
    """Rewrite every shard that has tombstones into a new shard folder without its deleted rows."""
    root = Path(root)
    start = time.perf_counter()
    with gen.writer_lock(root, wait):
        journal, base = gen.begin(root, "compact", {}, abort_pending)
        report = ChangeReport(journal["generation"], "compact")
        if journal["phase"] == "published":
            gen.finish(root, journal["generation"], keep)
            return report
        todo = [i for i, e in enumerate(base["shards"]) if e.get("deleted")]
        if not todo:
            (root / gen.JOURNAL).unlink(missing_ok=True)
            report.generation = base.get("generation", 0)
            return report
        work = gen.work_dir(root, journal["generation"])
        work.mkdir(exist_ok=True)
        first = _next_shard(base)
        manifest = base
        for j, i in enumerate(todo):
            entry = manifest["shards"][i]
            name = mf.shard_dir_name(first + j)
            if not (root / name).is_dir():
                built = work / name
                shutil.rmtree(built, ignore_errors=True)
                new_entry = _compact_shard(root, entry, built, base)
                os.replace(built, root / name)
                fsync_dir(root)
            else:
                new_entry = _entry_of(root / name, base, _count(root / name))
            report.deleted_passages += entry["deleted"]["count"]
            manifest["shards"][i] = {**new_entry, "dir": name}
        report.compacted_shards = len(todo)
        _finish_manifest(manifest, journal, report)
        gen.publish(root, manifest, keep)
    report.seconds = time.perf_counter() - start
    log.info("compact: generation %d: %d shards rewritten without %d deleted passages, in %.1f s",
             report.generation, report.compacted_shards, report.deleted_passages, report.seconds)
    return report


def _count(shard_dir: Path) -> int:
    store = DocStore(shard_dir / DOCSTORE)
    n = len(store)
    store.close()
    return n


def _entry_of(shard_dir: Path, manifest: dict, n: int) -> dict:
    kept = vf.filename(manifest["keep_vectors"]) if manifest.get("keep_vectors", "none") != "none" else None
    files = list(mf.SHARD_FILES) + ([kept] if kept else [])
    return {"dir": shard_dir.name, "state": "done", "num_docs": n, "staged_sha256": None, "staged_bytes": None,
            "encoded": n, "encode_runs": [], "sha256": {f: sha256_file(shard_dir / f) for f in files},
            "bytes": {f: (shard_dir / f).stat().st_size for f in files}, "vectors": kept, "finished_at": _now(),
            "compacted_from": None}


def _compact_shard(root: Path, entry: dict, out: Path, manifest: dict) -> dict:
    src = root / entry["dir"]
    deleted = read_tombstones(src, entry["deleted"])
    n = entry["num_docs"]
    live = np.setdiff1d(np.arange(n, dtype=np.int64), deleted)
    out.mkdir(parents=True)
    index = faiss.read_index(str(src / "index"))
    new = _compact_faiss(index, live, manifest, root, src)
    faiss.write_index(new, str(out / "index"))
    con = sqlite3.connect(out / DOCSTORE)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute(SCHEMA)
    con.execute("CREATE TEMP TABLE dead (pos INTEGER PRIMARY KEY)")
    con.executemany("INSERT INTO temp.dead VALUES (?)", ((int(p),) for p in deleted))
    con.execute("ATTACH DATABASE ? AS src", (f"file:{src / DOCSTORE}?mode=ro",))
    con.execute("INSERT INTO docs SELECT ROW_NUMBER() OVER (ORDER BY pos) - 1, docid, title, text, metadata "
                "FROM src.docs WHERE pos NOT IN (SELECT pos FROM temp.dead) ORDER BY pos")
    con.commit()
    con.execute("DETACH DATABASE src")
    con.close()
    finalize_docstore(out / DOCSTORE, manifest.get("filter_keys") or {})
    store = DocStore(out / DOCSTORE)
    write_docids(out, (d for d, _ in store.rows()))
    store.close()
    if entry.get("vectors"):
        data = vf.open_vectors(src / entry["vectors"], int(manifest["dim"]))
        with open(out / entry["vectors"], "wb") as f:
            for a in range(0, len(live), 65536):
                f.write(np.ascontiguousarray(data[live[a:a + 65536]]).tobytes())
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(out)
    result = _entry_of(out, manifest, len(live))
    result["compacted_from"] = entry["dir"]
    return result


def _compact_faiss(index: faiss.Index, live: np.ndarray, manifest: dict, root: Path, src: Path) -> faiss.Index:
    """The shard's faiss index without the deleted rows, the live ones renumbered 0..len(live)-1 in order."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None and not isinstance(ivf, faiss.IndexIVFFastScan):  # copy the codes: nothing re-quantized
        new = faiss.read_index(str(root / TRAINED)) if manifest["faiss"].get("trained_index") else \
            faiss.clone_index(index)
        new_ivf = faiss.extract_index_ivf(new)
        new_ivf.invlists.reset() if hasattr(new_ivf.invlists, "reset") else None
        remap = np.full(index.ntotal, -1, dtype=np.int64)
        remap[live] = np.arange(len(live))
        lists, size = ivf.invlists, ivf.invlists.code_size
        for lst in range(ivf.nlist):
            n = lists.list_size(lst)
            if not n:
                continue
            ids = faiss.rev_swig_ptr(lists.get_ids(lst), n).copy()
            codes = faiss.rev_swig_ptr(lists.get_codes(lst), n * size).copy().reshape(n, size)
            keep = remap[ids] >= 0
            if keep.any():
                new_ids = np.ascontiguousarray(remap[ids[keep]])
                kept = np.ascontiguousarray(codes[keep])
                new_ivf.invlists.add_entries(lst, int(keep.sum()), faiss.swig_ptr(new_ids), faiss.swig_ptr(kept))
        new_ivf.ntotal = len(live)
        new.ntotal = len(live)
        return new
    if manifest.get("keep_vectors", "none") != "none":
        vectors = np.asarray(vf.open_vectors(src / vf.filename(manifest["keep_vectors"]), int(manifest["dim"]))[live],
                             dtype=np.float32)
    else:
        vectors = index.reconstruct_batch(live)
    new = faiss.read_index(str(root / TRAINED)) if manifest["faiss"].get("trained_index") else \
        faiss.index_factory(int(manifest["dim"]), manifest["faiss"]["factory"], faiss.METRIC_INNER_PRODUCT)
    new.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return new
