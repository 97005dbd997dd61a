"""`dretriever teacher`: candidates, positives scored by the same teacher, fusion, cross-encoder, resume, bad input."""

from __future__ import annotations

import json

import pytest

from dretriever.cli import main as cli_main
from dretriever.data.beir import load_beir
from dretriever.encoder import BiEncoder
from dretriever.errors import DataError, DretrieverError
from dretriever.teacher import TeacherArgs, read_teacher_scores, write_teacher_scores


@pytest.fixture(scope="module")
def index_root(tmp_path_factory):
    """BM25 and dense indexes shared by the tests of this module (built once, reused by later runs)."""
    return tmp_path_factory.mktemp("teacher_indexes")


def run_teacher(tmp_path, index_root, data, name, **kw):
    args = TeacherArgs(data=str(data), output=str(tmp_path / f"{name}.jsonl"), split="test",
                       index_root=str(index_root), shards=1, progress=False, **kw)
    return read_teacher_scores(write_teacher_scores(args, "test"))


@pytest.fixture(scope="module")
def ds(scifact_small):
    return load_beir(scifact_small, split="test")


def check_layout(scores, ds, depth):
    assert set(scores) == set(ds.queries)
    for qid, hits in scores.items():
        docids = [d for d, _ in hits]
        values = [s for _, s in hits]
        assert values == sorted(values, reverse=True)
        positives = {d for d, r in ds.qrels[qid].items() if r > 0}
        assert positives <= set(docids)
        assert set(docids) - positives <= set(docids[:depth])  # beyond the top `depth` only positives
        assert len(docids) <= depth + len(positives)


def test_bm25_teacher_scores_positives_like_the_search_does(tmp_path, index_root, scifact_small, ds):
    shallow = run_teacher(tmp_path, index_root, scifact_small, "bm25-1", teacher="bm25", depth=1)
    deep = run_teacher(tmp_path, index_root, scifact_small, "bm25-50", teacher="bm25", depth=50)
    check_layout(shallow, ds, 1)
    check_layout(deep, ds, 50)
    compared = 0
    for qid, hits in shallow.items():
        deep_scores = dict(deep[qid])
        for docid, score in hits[1:]:  # positives appended below the top 1, scored through the index reader
            if docid in dict(deep[qid][:50]):
                assert score == pytest.approx(deep_scores[docid], rel=1e-5)
                compared += 1
    assert compared >= 5


def test_dense_teacher_scores_positives_like_the_index(tmp_path, index_root, scifact_small, tiny_model, ds,
                                                       monkeypatch):
    full = run_teacher(tmp_path, index_root, scifact_small, "dense-all", teacher="dense", model=str(tiny_model), depth=len(ds.corpus))

    def no_encoding(*a, **kw):
        raise AssertionError("the teacher re-encoded documents its index holds")

    monkeypatch.setattr(BiEncoder, "encode_docs", no_encoding)  # the index is built: appended positives read it
    shallow = run_teacher(tmp_path, index_root, scifact_small, "dense-2", teacher="dense", model=str(tiny_model), depth=2)
    check_layout(shallow, ds, 2)
    compared = 0
    for qid, hits in shallow.items():
        ref = dict(full[qid])
        assert len(ref) == len(ds.corpus)
        for docid, score in hits:  # appended positives are scored with the index's own vectors, not re-encoded
            # the file holds 6 decimals: two roundings of scores a float error apart can differ by one quantum
            assert score == pytest.approx(ref[docid], abs=2e-6)
            compared += 1
        assert [d for d, _ in hits[:2]] == [d for d, _ in full[qid][:2]]
    assert compared > 2 * len(shallow)


def test_fusion_teacher_interpolates_normalised_runs(tmp_path, index_root, scifact_small, tiny_model, ds):
    fused = run_teacher(tmp_path, index_root, scifact_small, "fusion", teacher="fusion", model=str(tiny_model), depth=10,
                        alpha=0.3)
    check_layout(fused, ds, 10)
    for hits in fused.values():
        assert all(0.0 <= s <= 1.0 + 1e-9 for _, s in hits)
        assert hits[0][1] > 0.3  # the best document is near the top of at least one run
    rrf = run_teacher(tmp_path, index_root, scifact_small, "rrf", teacher="fusion", model=str(tiny_model), depth=10, fusion="rrf")
    for hits in rrf.values():
        assert all(0 < s <= 2 / 61 + 1e-6 for _, s in hits)


def test_cross_encoder_teacher_rescores_first_stage_with_raw_logits(tmp_path, index_root, scifact_small, ds):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from dretriever.models import resolve_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=64, num_labels=1)).eval()
    path = tmp_path / "tiny-cross-encoder"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)

    bm25 = run_teacher(tmp_path, index_root, scifact_small, "bm25-3", teacher="bm25", depth=3)
    cross = run_teacher(tmp_path, index_root, scifact_small, "cross", teacher="cross-encoder", cross_encoder=str(path),
                        candidates="bm25", depth=3)
    qid = next(iter(cross))
    assert {d for d, _ in cross[qid]} == {d for d, _ in bm25[qid]}
    docid, score = cross[qid][0]
    inputs = tokenizer(ds.queries[qid], ds.corpus[docid].contents, return_tensors="pt", truncation=True)
    with torch.no_grad():
        logit = model(**inputs).logits[0, 0].item()
    assert score == pytest.approx(logit, abs=1e-4)


def test_resume_keeps_finished_queries(tmp_path, index_root, scifact_small, ds):
    args = TeacherArgs(data=str(scifact_small), output=str(tmp_path / "t.jsonl"), split="test", teacher="bm25",
                       depth=3, index_root=str(index_root), shards=1, progress=False, chunk_queries=4)
    first = next(iter(ds.queries))
    partial = tmp_path / "t.jsonl.partial"
    meta = {"format": "dretriever-teacher-scores/1", **args.settings()}
    (tmp_path / "t.jsonl.partial.meta.json").write_text(json.dumps(meta))
    partial.write_text(json.dumps({"qid": first, "docids": ["marker"], "scores": [42.0]}) + "\n{\"qid\": \"tru")
    scores = read_teacher_scores(write_teacher_scores(args))
    assert scores[first] == [("marker", 42.0)]  # resumed: the finished line was kept, the torn line dropped
    assert set(scores) == set(ds.queries)
    assert not partial.exists()
    # different settings: the partial file is not reused
    partial.write_text(json.dumps({"qid": first, "docids": ["marker"], "scores": [42.0]}) + "\n")
    args.depth = 2
    scores = read_teacher_scores(write_teacher_scores(args))
    assert scores[first] != [("marker", 42.0)]


@pytest.mark.parametrize("line, message", [
    ('{"qid": "1", "docids": ["a"], "scores": [1.0, 2.0]}', "1 docids but 2 scores"),
    ('{"docids": ["a"], "scores": [1.0]}', "missing 'qid'"),
    ('{"qid": "1", "docids": ["a", "a"], "scores": [1.0, 2.0]}', "lists a document twice"),
    ('{"qid": "1", "docids": ["a"], "scores": ["x"]}', "finite number"),
    ('{"qid": "1", "docids": ["a"]', "malformed JSON"),
])
def test_bad_teacher_file_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"qid": "0", "docids": ["a"], "scores": [1.0]}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{message}"):
        read_teacher_scores(path)


def test_cli_errors(tmp_path, scifact_small, capsys):
    with pytest.raises(DretrieverError, match="cross_encoder"):
        TeacherArgs(data=str(scifact_small), output="x", teacher="cross-encoder")
    assert cli_main(["teacher", "--data", str(scifact_small), "--output", str(tmp_path / "x.jsonl"),
                     "--teacher", "cross-encoder"]) == 2
    assert "error: cross_encoder" in capsys.readouterr().err
    assert cli_main(["teacher", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "x.jsonl"),
                     "--teacher", "bm25"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_teacher_positives_reports_where_the_teacher_ranks_judged_documents(tmp_path, capsys):
    from eval.teacher_positives import main as teacher_positives

    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text(json.dumps({"qid": "q1", "docids": ["b", "a", "d", "c"], "scores": [4.0, 3.0, 2.0, 1.0]}) + "\n"
                       + json.dumps({"qid": "q2", "docids": ["x", "y"], "scores": [5.0, 1.0]}) + "\n")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\tc\t1\nq2\tx\t1\nq2\ty\t0\n")
    assert teacher_positives(["--teacher", str(teacher), "--qrels", str(qrels), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    # positives at ranks 2, 4 (q1) and 1 (q2); beyond the top 2: one of three
    assert "3 judged positives" in out and "median rank of a positive 2; in the top 10 100.0%; beyond the top 2 33.3%" in out
    # q1: whichever positive is drawn, its one top-2 candidate (b, 4.0) is above it; q2: y (1.0) is below x (5.0)
    assert "scores 50.0% of its query's candidates above it (mean over 2 queries)" in out
