"""Merge the shards of an index into an index of one shard, in the same layout (Pyserini loads its shard).

IVF shards were all trained from one quantizer (``trained.index``), so their inverted lists can be
appended to each other (faiss ``merge_from``, ids shifted by the vectors before them); Flat shards are
concatenated. HNSW graphs cannot be merged (faiss has no merge for them): build with one shard instead.
Doc stores are concatenated with positions shifted the same way; kept vectors likewise.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import faiss

from ..atomic import fsync_dir, sha256_file
from ..errors import DretrieverError
from . import manifest as mf
from .docids import DocIds, write_docids
from .docstore import FILENAME as DOCSTORE
from .docstore import SCHEMA, finalize_docstore


def _mergeable(index: faiss.Index) -> faiss.Index:
    """The part of ``index`` that holds the vectors and supports ``merge_from``."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        pass
    if isinstance(index, faiss.IndexFlatCodes):
        return index
    raise DretrieverError(f"faiss cannot merge a {type(index).__name__} (HNSW graphs have no merge); "
                          "build the index with one shard instead")


def merge_index(root: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    root, out = Path(root), Path(out)
    manifest = mf.read_manifest(root)
    if not manifest.get("complete"):
        raise DretrieverError(f"{root}: the index is incomplete; finish its build before merging")
    for entry in manifest["shards"]:
        if problem := mf.shard_problem(root, entry):
            raise DretrieverError(f"{root / entry['dir']}: {problem}")
        if entry.get("deleted"):  # merging would bring deleted rows back
            raise DretrieverError(f"{root / entry['dir']}: has deleted rows; run `dretriever datastore compact "
                                  f"--datastore {root}` first")
    if out.exists():
        if not overwrite:
            raise DretrieverError(f"{out}: exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shard = tmp / mf.shard_dir_name(0)
    shard.mkdir(parents=True)

    trained = manifest["faiss"].get("trained_index")
    merged = faiss.read_index(str(root / trained)) if trained else None
    kept = manifest["shards"][0].get("vectors")
    con = sqlite3.connect(shard / DOCSTORE)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute(SCHEMA)
    offset = 0
    with open(shard / kept, "wb") if kept else open(os.devnull, "wb") as vec_out:
        for entry in manifest["shards"]:
            src = root / entry["dir"]
            part = faiss.read_index(str(src / "index"))  # read into RAM: merge_from empties its argument
            count = part.ntotal
            if merged is None:
                merged = faiss.clone_index(part)
                merged.reset()
            inner = _mergeable(merged)
            inner.merge_from(_mergeable(part), offset)
            con.execute("ATTACH DATABASE ? AS src", (f"file:{src / DOCSTORE}?mode=ro",))
            con.execute("INSERT INTO docs SELECT pos + ?, docid, title, text, metadata FROM src.docs ORDER BY pos",
                        (offset,))
            con.commit()
            con.execute("DETACH DATABASE src")
            if kept:
                with open(src / kept, "rb") as f:
                    shutil.copyfileobj(f, vec_out, 1 << 22)
            offset += count
    con.close()
    finalize_docstore(shard / DOCSTORE, manifest.get("filter_keys") or {})
    if inner is not merged:  # a pre-transform (OPQ) or IVF wrapper keeps its own count
        merged.ntotal = inner.ntotal
    faiss.write_index(merged, str(shard / "index"))
    write_docids(shard, (d for entry in manifest["shards"] for d in DocIds(root / entry["dir"])))
    if trained:
        shutil.copy2(root / trained, tmp / trained)
    files = list(mf.SHARD_FILES) + ([kept] if kept else [])
    fsync_dir(shard)
    new = mf.new_manifest(manifest["encoder"], manifest["faiss"]["factory"], 1,
                          {"merged_from": str(root.resolve()), "source": manifest["source"]})
    new.update(dim=manifest["dim"], keep_vectors=manifest.get("keep_vectors", "none"), complete=True,
               filter_keys=manifest.get("filter_keys") or {})
    new["faiss"].update({k: v for k, v in manifest["faiss"].items() if k != "factory"})
    new["shards"][0].update(state="done", num_docs=offset, encoded=offset, vectors=kept,
                            sha256={f: sha256_file(shard / f) for f in files},
                            bytes={f: (shard / f).stat().st_size for f in files},
                            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    mf.write_manifest(tmp, new)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return new
