"""Disk full: ``dretriever index build`` into a small tmpfs (mounted by the test; CI runs as root) fails with
``PATH: no space left on device``, exit status 2 and no traceback; no unfinished shard is marked done and the
index does not open as complete; after the filesystem grows, the same command resumes and completes with the
clean build's ids and vectors."""

import os
import subprocess

import pytest

from dretriever.cli import main as cli_main
from dretriever.data.beir import load_corpus
from dretriever.errors import DretrieverError
from dretriever.index import manifest as mf
from dretriever.index.sharded import ShardedIndex
from tests.kill_harness import compare_with_clean


def mount_tmpfs(folder, size_bytes: int, remount: bool = False) -> None:
    opts = f"{'remount,' if remount else ''}size={size_bytes}"
    cmd = ["mount", "-o", opts, folder] if remount else ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)]
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs ({done.stderr.strip()})") if os.environ.get("CI", "").lower() == "true" \
            else pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs mounted at tmp_path/fs (and unmounted after); needs root: under CI its absence fails the test."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the disk-full test needs root to mount a tmpfs; CI runs as root")
        pytest.skip("the disk-full test needs root to mount a tmpfs")
    folder = tmp_path / "fs"
    folder.mkdir()
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)


def folder_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_index_build_on_a_full_disk_fails_clearly_and_resumes_with_space(scifact_small, tiny_model, tmp_path,
                                                                        small_fs, capsys):
    args = ["index", "build", "--corpus", str(scifact_small / "corpus.jsonl"), "--shards", "3",
            "--model", str(tiny_model), "--precision", "fp32"]
    clean = tmp_path / "clean"
    assert cli_main(args + ["--output", str(clean)]) == 0
    need = folder_bytes(clean)
    # the finished index's size: the staged doc stores take room too, so the build stops midway (here after
    # the first shard: done ones must be whole, the one being written not marked done)
    mount_tmpfs(small_fs, need // 4096 * 4096)
    out = small_fs / "idx"
    capsys.readouterr()
    assert cli_main(args + ["--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"dretriever index build: error: {out}: no space left on device" in err, err
    assert "rerun the same command to resume" in err and "Traceback" not in err

    m = mf.read_manifest(out)
    assert not m["complete"]
    states = [s["state"] for s in m["shards"]]
    assert states.count("done") < 3, states
    for s in m["shards"]:  # a shard marked done is whole (its checksums hold); the others are not in place
        if s["state"] == "done":
            assert mf.shard_problem(out, s, full=True) is None, s
        else:
            assert not (out / s["dir"]).exists(), s
    with pytest.raises(DretrieverError, match="incomplete"):
        ShardedIndex.open(out)

    mount_tmpfs(small_fs, need * 4, remount=True)
    assert cli_main(args + ["--output", str(out)]) == 0
    assert mf.read_manifest(out)["complete"]
    assert compare_with_clean(clean, out) == len(load_corpus(scifact_small / "corpus.jsonl"))  # each doc once
