"""Generations of a living datastore: the writer lock, the change journal, publishing, garbage collection.

A change (add, delete, compact) never modifies a file a published generation references. It writes new
immutable files (new shard folders numbered after every shard used so far, ``deleted.gNNNNNN.npy`` tombstone
files, ``bm25.gNNNNNN/``), then *publishes* generation N: ``generations/NNNNNN.json`` and then
``manifest.json`` are replaced atomically (write to a temporary name, fsync, rename). A reader opens whatever
``manifest.json`` names, so it sees generation N-1 or N, whole, never a mix.

Before a change writes anything it records itself in ``change.json`` (the journal: operation, arguments,
target generation, phase). A ``kill -9`` at any moment leaves the previous generation published and complete;
the same command run again reads the journal and finishes the change (each step is idempotent); a different
change is refused until then (or until ``--abort_pending true`` drops the pending one's work).

Garbage collection, after each publish: the files of the last ``keep`` generations (default 2: the new one and
the one before, which a server may still be answering from while it reloads) are kept; every shard folder,
tombstone file, BM25 folder and ``generations/`` entry no kept generation references is removed. A reader
that opened an older generation keeps its open files (``ShardedIndex.open`` opens them all; Linux keeps an
unlinked open file), but must reopen to see the change.

One writer at a time: :func:`writer_lock` holds ``.writer.lock`` (fcntl) for the whole change and writes its
holder (pid, host, command, start) into it; a second writer is refused naming the holder, or waits with ``wait``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from ..atomic import file_lock, write_json_atomic
from ..errors import DretrieverError
from . import manifest as mf

GENERATIONS = "generations"
JOURNAL = "change.json"
WRITER_LOCK = ".writer.lock"
KEEP = 2


def generation_file(root: Path, generation: int) -> Path:
    return root / GENERATIONS / f"{generation:06d}.json"


def work_dir(root: Path, generation: int) -> Path:
    return root / f".change-g{generation:06d}"


@contextlib.contextmanager
def writer_lock(root: Path, wait: bool = False):
    """Hold the datastore's writer lock; a second writer gets a DretrieverError naming the holder."""
    path = Path(root) / WRITER_LOCK
    with open(path, "a+") as f:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(f.fileno(), flags)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise DretrieverError(f"{root}: another writer is changing this datastore ({holder}); wait for it to "
                                  "finish, or pass --wait true to queue behind it") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "command": " ".join(sys.argv[:6]),
                                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_journal(root: Path) -> dict | None:
    path = root / JOURNAL
    return json.loads(path.read_text()) if path.is_file() else None


def write_journal(root: Path, journal: dict) -> None:
    write_json_atomic(root / JOURNAL, journal)


def begin(root: Path, op: str, args: dict, abort_pending: bool = False) -> tuple[dict, dict]:
    """The journal of this change (resumed when the same change was interrupted) and the base manifest."""
    manifest = mf.read_manifest(root)
    if not manifest.get("complete"):
        raise DretrieverError(f"{root}: the datastore's build is incomplete; rerun `dretriever datastore build`")
    journal = read_journal(root)
    if journal is not None and (journal["op"], journal["args"]) != (op, args):
        if not abort_pending:
            raise DretrieverError(
                f"{root}: an interrupted {journal['op']} (generation {journal['generation']}, args "
                f"{json.dumps(journal['args'])}) is pending; rerun that command to finish it, or pass "
                "--abort_pending true to drop it")
        abort(root, journal)
        journal = None
    if journal is None:
        current = manifest.get("generation", 0)
        if not generation_file(root, current).is_file():  # the build's generation 0, kept like any other
            (root / GENERATIONS).mkdir(exist_ok=True)
            write_json_atomic(generation_file(root, current), manifest)
        journal = {"op": op, "args": args, "base": current, "generation": current + 1, "phase": "start",
                   "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_journal(root, journal)
    elif manifest.get("generation", 0) >= journal["generation"]:
        journal["phase"] = "published"  # killed after publishing, before the journal was removed
    base = json.loads(generation_file(root, journal["base"]).read_text())
    return journal, base


def abort(root: Path, journal: dict) -> None:
    """Drop a pending change: its work folder and the files it wrote that no generation references."""
    shutil.rmtree(work_dir(root, journal["generation"]), ignore_errors=True)
    (root / JOURNAL).unlink(missing_ok=True)
    collect_garbage(root, keep=10**9)


def publish(root: Path, manifest: dict, keep: int = KEEP) -> None:
    """Make ``manifest`` the current generation (generations/N.json, then manifest.json), end the journal, GC."""
    (root / GENERATIONS).mkdir(exist_ok=True)
    write_json_atomic(generation_file(root, manifest["generation"]), manifest)
    with file_lock(root / mf.LOCK):
        mf.write_manifest(root, manifest)
    finish(root, manifest["generation"], keep)


def finish(root: Path, generation: int, keep: int = KEEP) -> None:
    shutil.rmtree(work_dir(root, generation), ignore_errors=True)
    (root / JOURNAL).unlink(missing_ok=True)
    collect_garbage(root, keep)


def referenced(manifest: dict) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """Shard folders, (folder, tombstone file) pairs and BM25 folders that ``manifest`` uses."""
    dirs = {e["dir"] for e in manifest["shards"]}
    stones = {(e["dir"], e["deleted"]["file"]) for e in manifest["shards"] if e.get("deleted")}
    bm25 = {manifest["bm25"]} if manifest.get("bm25") else set()
    return dirs, stones, bm25


def collect_garbage(root: Path, keep: int = KEEP) -> list[str]:
    """Remove what no kept generation (the last ``keep``, and always the current one) references."""
    current = mf.read_manifest(root)
    gen = current.get("generation", 0)
    manifests = [current]
    for path in sorted((root / GENERATIONS).glob("*.json")) if (root / GENERATIONS).is_dir() else []:
        number = int(path.stem)
        if number > gen - keep and number <= gen:
            manifests.append(json.loads(path.read_text()))
        elif number <= gen - keep:
            path.unlink()
    dirs, stones, bm25 = set(), set(), set()
    for m in manifests:
        d, s, b = referenced(m)
        dirs |= d
        stones |= s
        bm25 |= b
    journal = read_journal(root)
    removed = []
    for path in root.iterdir():
        name = path.name
        if path.is_dir() and name.startswith("shard-") and name not in dirs:
            shutil.rmtree(path)
            removed.append(name)
        elif path.is_dir() and name.startswith("shard-"):
            for stone in path.glob("deleted.g*.npy"):
                if (name, stone.name) not in stones:
                    stone.unlink()
                    removed.append(f"{name}/{stone.name}")
        elif path.is_dir() and (name == "bm25" or name.startswith("bm25.g")) and name not in bm25:
            shutil.rmtree(path)
            removed.append(name)
        elif name.startswith(".change-g") and (journal is None or path != work_dir(root, journal["generation"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed
