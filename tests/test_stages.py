"""The stage clock: exclusive time per stage, nothing charged without a clock, and a datastore build's split."""

from __future__ import annotations

import json
import time

import pytest

from dretriever.index.datastore import DatastoreArgs, build_datastore
from dretriever.stages import StageClock, current, stage, staged_iter


def test_nested_stages_are_exclusive_and_add_up_to_the_wall_time():
    with StageClock() as clock:
        with stage("outer"):
            time.sleep(0.05)
            with stage("inner"):
                time.sleep(0.1)
            time.sleep(0.05)
        time.sleep(0.02)
    assert clock.seconds["inner"] == pytest.approx(0.1, abs=0.03)
    assert clock.seconds["outer"] == pytest.approx(0.1, abs=0.03)  # the inner 0.1 s is not counted twice
    assert clock.seconds["other"] == pytest.approx(0.02, abs=0.02)
    assert sum(clock.seconds.values()) == pytest.approx(clock.wall, rel=1e-6)
    assert current() is None


def test_staged_iter_charges_producing_items_not_consuming_them():
    def slow():
        for i in range(3):
            time.sleep(0.03)
            yield i

    with StageClock() as clock:
        for _ in staged_iter(slow(), "read"):
            with stage("work"):
                time.sleep(0.01)
    assert clock.seconds["read"] == pytest.approx(0.09, abs=0.03)
    assert clock.seconds["work"] == pytest.approx(0.03, abs=0.02)


def test_stages_cost_nothing_and_record_nothing_without_a_clock():
    with stage("read"):
        pass
    assert current() is None


def test_a_datastore_build_reports_its_stages(tmp_path, tiny_model):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"_id": f"d{i}", "text": " ".join(f"w{j}" for j in range(i % 30 + 5))}) + "\n"
                           for i in range(300)))
    args = DatastoreArgs(sources=[str(src)], output=str(tmp_path / "ds"), model=str(tiny_model), shards=2,
                         chunking="words", chunk_size=10, chunk_overlap=0, precision="fp32", progress=False)
    with StageClock() as clock:
        build_datastore(args)
    for name in ("load", "read", "chunk", "tokenize", "encode", "write", "spool", "index", "checksum"):
        assert clock.seconds.get(name, 0) > 0, name
    assert sum(clock.seconds.values()) == pytest.approx(clock.wall, rel=1e-6)
