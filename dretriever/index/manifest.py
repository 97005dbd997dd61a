"""``manifest.json``: what an index was built from, and which shards are finished.

A shard counts as done only when the manifest says so *and* its files are there with the recorded sizes
(the cheap check every open makes) or, for ``full`` checks (``dretriever index verify``, a resumed build),
the recorded sha256. Several processes (``accelerate launch``, ``torchrun``) update it under a file lock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import __version__
from ..atomic import file_lock, sha256_file, write_json_atomic
from ..errors import DretrieverError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
SHARD_FILES = ("index", "docid", "docid.offsets", "docs.sqlite")


def shard_dir_name(i: int) -> str:
    return f"shard-{i:05d}"


def new_shard_entry(i: int) -> dict:
    """A shard nothing has been done for. States: pending -> staged -> encoding -> done."""
    return {"dir": shard_dir_name(i), "state": "pending", "num_docs": None, "staged_sha256": None,
            "staged_bytes": None, "encoded": 0, "encode_runs": [], "sha256": None, "bytes": None,
            "vectors": None, "finished_at": None}


def new_manifest(encoder_info: dict | None, factory: str, num_shards: int, source: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"dretriever {__version__}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoder": encoder_info,
        "faiss": {"factory": factory, "metric": "inner_product", "trained_index": None},
        "source": source,
        "source_passes": 0,
        "num_shards": num_shards,
        "complete": False,
        "shards": [new_shard_entry(i) for i in range(num_shards)],
    }


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DretrieverError(f"{path}: no manifest; is {root} a dretriever index?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DretrieverError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DretrieverError(f"{path}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION} "
                              "(made by another dretriever version); rebuild it with --overwrite")
    return manifest


def write_manifest(root: str | Path, manifest: dict) -> None:
    write_json_atomic(Path(root) / MANIFEST, manifest)


def update_manifest(root: str | Path, change) -> dict:
    """Apply ``change(manifest)`` under the index's lock (read, modify, write atomically)."""
    root = Path(root)
    with file_lock(root / LOCK):
        manifest = read_manifest(root)
        change(manifest)
        write_manifest(root, manifest)
        return manifest


def shard_files(entry: dict) -> list[str]:
    return list(entry.get("sha256") or SHARD_FILES)


def shard_problem(root: Path, entry: dict, full: bool = False) -> str | None:
    """Why the shard is not usable (``None`` when it is): not done, a file missing, a size or checksum off."""
    if entry.get("state") != "done" or not entry.get("sha256"):
        return f"state is {entry.get('state')!r}, not 'done'"
    shard_dir = Path(root) / entry["dir"]
    for name in shard_files(entry):
        path = shard_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"][name]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes'][name]}"
        if full and sha256_file(path) != entry["sha256"][name]:
            return f"{name} does not match its sha256 in the manifest"
    stones = entry.get("deleted")  # a living datastore's tombstones for this generation
    if stones:
        path = shard_dir / stones["file"]
        if not path.is_file():
            return f"{stones['file']} is missing"
        if full and sha256_file(path) != stones["sha256"]:
            return f"{stones['file']} does not match its sha256 in the manifest"
    return None


def shard_is_done(root: Path, entry: dict, full: bool = False) -> bool:
    """True when the manifest marks the shard done and its files match (sizes; with ``full``, sha256)."""
    return shard_problem(root, entry, full) is None
