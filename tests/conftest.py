"""Shared fixtures: a tiny random BERT (fast, offline) and the SciFact copy beside the checkout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.ray_cluster import ray_cluster  # noqa: F401  (the session's local Ray cluster)

# Idle OpenMP threads sleep instead of spinning: on 2 shared cores, spinning faiss/torch pools slowed
# k-means and encoding in tests by up to 50x. Set before faiss or torch start their thread pools.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Retriever.load encodes queries with the index's own backend here, not the one measured fastest for this CPU
# (dretriever.autotune, which tests/test_autotune.py checks on its own): no test pays a measurement, and every
# test sees the same backend on every CI machine.
os.environ.setdefault("DRETRIEVER_QUERY_BACKEND", "index")

REPO = Path(__file__).resolve().parent.parent

# Property-based tests (hypothesis): a modest example count by default; `pytest --slow` (or
# DRETRIEVER_FUZZ_EXAMPLES=N, used by eval/reliability.py) raises it.
FUZZ_EXAMPLES = {"default": 40, "slow": 1000}


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="larger property-based runs (hypothesis, schemathesis): see eval/reliability.py")


def pytest_configure(config):
    from hypothesis import HealthCheck, settings

    slow = config.getoption("--slow") or bool(os.environ.get("DRETRIEVER_FUZZ_EXAMPLES"))
    examples = int(os.environ.get("DRETRIEVER_FUZZ_EXAMPLES", 0)) or FUZZ_EXAMPLES["slow" if slow else "default"]
    # derandomized by default (CI sees the same examples every run); a slow run explores afresh
    settings.register_profile("dretriever", max_examples=examples, deadline=None, database=None,
                              derandomize=not slow,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture])
    settings.load_profile("dretriever")


SCIFACT = Path(os.environ.get("BEIR_DATA", REPO.parent / "shared" / "beir")) / "scifact"


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    """``../shared/beir/scifact``; under CI (``CI=true``) its absence fails the run instead of skipping."""
    if not (SCIFACT / "corpus.jsonl").is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"SciFact is missing at {SCIFACT}; CI needs it")
        pytest.skip(f"SciFact not found at {SCIFACT}")
    return SCIFACT


@pytest.fixture(scope="session")
def scifact_small(scifact_dir, tmp_path_factory) -> Path:
    """A SciFact slice of about 400 documents (397) that keeps every test query judged on it (fast end-to-end tests)."""
    out = tmp_path_factory.mktemp("scifact_small")
    (out / "qrels").mkdir()
    qrels = [line.rstrip("\n").split("\t") for line in (scifact_dir / "qrels" / "test.tsv").open()][1:]
    qrels = qrels[:60]
    wanted = {d for _, d, _ in qrels}
    kept = []
    with (scifact_dir / "corpus.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            if doc["_id"] in wanted or len(kept) < 400 - len(wanted):
                kept.append(line)
    (out / "corpus.jsonl").write_text("".join(kept))
    qids = {q for q, _, _ in qrels}
    queries = [l for l in (scifact_dir / "queries.jsonl").open() if json.loads(l)["_id"] in qids]
    (out / "queries.jsonl").write_text("".join(queries))
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in qrels))
    return out


def query_texts(beir_dir: Path, n: int | None = None) -> list[str]:
    """The first ``n`` query texts of a BEIR folder (all of them by default)."""
    return [json.loads(line)["text"] for line in (beir_dir / "queries.jsonl").open()][:n]


def corpus_head(beir_dir: Path, n: int, out: Path) -> Path:
    """The first ``n`` lines of a BEIR folder's corpus, written to ``out`` (a JSONL file)."""
    out.write_text("".join((beir_dir / "corpus.jsonl").read_text().splitlines(keepends=True)[:n]))
    return out


def small_datastore(beir_dir: Path, model: Path, root: Path, docs: int, shards: int, **kw) -> Path:
    """A datastore of a BEIR corpus's first ``docs`` documents in 40-word passages (overlap 10), at ``root/ds``
    (the servers' tests; ``kw``: more :class:`DatastoreArgs`)."""
    from dretriever.index.datastore import DatastoreArgs, build_datastore

    corpus = corpus_head(beir_dir, docs, root / "corpus.jsonl")
    build_datastore(DatastoreArgs(sources=[str(corpus)], output=str(root / "ds"), model=str(model), shards=shards,
                                  chunking="words", chunk_size=40, chunk_overlap=10, progress=False, **kw))
    return root / "ds"


def make_tiny_bert(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A randomly initialised BERT with MiniLM's tokenizer, saved as a dretriever encoder at ``path``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dretriever.encoder import BiEncoder, EncoderConfig
    from dretriever.models import resolve_model

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512)
    encoder = BiEncoder(BertModel(config), tokenizer,
                        EncoderConfig(pooling="mean", normalize=True, query_max_length=32, doc_max_length=128))
    encoder.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def assert_same_ranking(ids_a, scores_a, ids_b, scores_b, atol: float, last_run_may_be_cut: bool = False) -> None:
    """Two rankings agree: equal scores position by position (within ``atol``), and the same ids in the same
    order except inside a run of tied scores (within ``atol``), whose order the search library leaves open:
    such a run must hold the same ids as a set. That includes the last run, unless ``last_run_may_be_cut``:
    a tie that continues past the ranking's depth may be cut at different documents, so then only its scores
    are compared (a last run of one id, no tie, is compared all the same)."""
    import numpy as np

    assert len(ids_a) == len(ids_b)
    np.testing.assert_allclose(scores_a, scores_b, rtol=0, atol=atol)
    start = 0
    for i in range(1, len(ids_b) + 1):
        if i == len(ids_b) or abs(scores_b[i] - scores_b[start]) > atol:
            if i < len(ids_b) or not last_run_may_be_cut or i - start == 1:
                assert sorted(ids_a[start:i]) == sorted(ids_b[start:i]), (start, ids_a[start:i], ids_b[start:i])
            start = i
