"""``manifest.json``: what an index was built from, and which shards are finished.

A shard counts as done only when the manifest says so *and* the sha256 of its files match.
Several processes (``accelerate launch``) update the manifest under a file lock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import __version__
from ..errors import DretrieverError
from .atomic import file_lock, sha256_file, write_json_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
SHARD_FILES = ("index", "docid", "docs.sqlite")


def shard_dir_name(i: int) -> str:
    return f"shard-{i:05d}"


def new_manifest(encoder_info: dict, factory: str, num_shards: int, source: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"dretriever {__version__}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoder": encoder_info,
        "faiss": {"factory": factory, "metric": "inner_product", "trained_index": None},
        "source": source,
        "num_shards": num_shards,
        "complete": False,
        "shards": [
            {"dir": shard_dir_name(i), "state": "pending", "num_docs": None, "sha256": None, "finished_at": None}
            for i in range(num_shards)
        ],
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
        raise DretrieverError(f"{path}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}")
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


def shard_checksums(shard_dir: Path) -> dict[str, str]:
    return {name: sha256_file(shard_dir / name) for name in SHARD_FILES}


def shard_is_done(root: Path, entry: dict) -> bool:
    """True when the manifest marks the shard done and its files still match their checksums."""
    if entry.get("state") != "done" or not entry.get("sha256"):
        return False
    shard_dir = root / entry["dir"]
    if not all((shard_dir / name).is_file() for name in SHARD_FILES):
        return False
    return shard_checksums(shard_dir) == entry["sha256"]
