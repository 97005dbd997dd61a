"""STAR: mining (positives excluded, depth), batches, masks, a few training steps, the train command."""

import json

import pytest

from dretriever.data.negatives import read_negatives

from tests.train_helpers import make_method, make_toy_beir, write_random_negatives, write_recipe


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_beir(tmp_path_factory.mktemp("toy"))


def _judged(toy) -> dict[str, set[str]]:
    """The toy dataset's judged documents per train query."""
    qrels = {}
    for line in (toy / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, _ = line.split("\t")
        qrels.setdefault(q, set()).add(d)
    return qrels


def test_mine_excludes_positives_and_keeps_depth(toy, tiny_model, tmp_path):
    from dretriever.cli import main

    index = tmp_path / "index"
    assert main(["index", "build", "--corpus", str(toy), "--output", str(index), "--model", str(tiny_model),
                 "--shards", "2", "--precision", "fp32"]) == 0
    out = tmp_path / "neg.jsonl"
    assert main(["mine", "--index", str(index), "--data", str(toy), "--output", str(out), "--depth", "7",
                 "--precision", "fp32"]) == 0
    negs, meta = read_negatives(out)
    assert meta["depth"] == 7 and len(negs) == 32
    qrels = _judged(toy)
    for qid, ids in negs.items():
        assert len(ids) == 7 and len(set(ids)) == 7
        assert not set(ids) & qrels[qid]
    rows = [json.loads(l) for l in out.read_text().splitlines()[1:]]
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)


def test_best_passage_per_document():
    from dretriever.commands.mine import best_passage_per_document

    hits = [("a#0", 0.9), ("b#1", 0.8), ("a#2", 0.7), ("x#y#1", 0.5), ("b#0", 0.4)]
    assert best_passage_per_document(hits) == [("a", 0.9), ("b", 0.8), ("x#y", 0.5)]


def test_mine_on_a_datastore_writes_document_ids(toy, tiny_model, tmp_path):
    """A datastore's rows are passages D#i: mine gives the documents (as Retriever.run ranks them, through the
    doc store's doc_id column), never passage ids, which match no corpus document and let positives through."""
    from dretriever.cli import main
    from dretriever.index.datastore import DatastoreArgs, build_datastore
    from dretriever.search.retriever import Retriever

    ds = tmp_path / "ds"
    build_datastore(DatastoreArgs(sources=[str(toy / "corpus.jsonl")], output=str(ds), model=str(tiny_model),
                                  shards=2, chunking="words", chunk_size=6, chunk_overlap=1, precision="fp32",
                                  progress=False))
    manifest = json.loads((ds / "manifest.json").read_text())
    assert sum(s["num_docs"] for s in manifest["shards"]) > 2 * 48  # several passages per document
    out = tmp_path / "neg.jsonl"
    assert main(["mine", "--index", str(ds), "--data", str(toy), "--output", str(out), "--depth", "4",
                 "--precision", "fp32"]) == 0
    negs, _ = read_negatives(out)
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (toy / "queries.jsonl").read_text().splitlines()}
    qrels = _judged(toy)
    k = 4 + max(map(len, qrels.values())) + 1  # the passages mine searches
    expected = Retriever.load(str(ds), precision="fp32").run(queries, k=k, mode="dense")
    assert len(negs) == 32
    for qid, ids in negs.items():
        assert ids == [d for d, _ in expected[qid] if d not in qrels[qid] and d != qid][:4]
        assert ids and not set(ids) & qrels[qid] and all("#" not in d for d in ids)


def _star(toy, negatives, tiny_model, out, **over):
    from dretriever.train.star import Star, StarArgs

    return make_method(Star, StarArgs, "star", tiny_model, toy, out,
                       dict(negatives=str(negatives), neg_depth=10, temperature=0.05), **over)


class _Acc:
    num_processes, process_index = 1, 0


def test_batches_deterministic_and_masks(toy, tiny_model, tmp_path):
    from dretriever.encoder import BiEncoder

    neg = write_random_negatives(toy, tmp_path / "neg.jsonl")
    args, star = _star(toy, neg, tiny_model, tmp_path / "o", hard_negatives=2)
    enc = BiEncoder.from_pretrained(tiny_model)
    star.setup(enc, _Acc())
    b0, b0_again, b1 = star.batches(0), star.batches(0), star.batches(1)
    assert [x["global"] for x in b0] == [x["global"] for x in b0_again]
    assert [x["global"] for x in b0] != [x["global"] for x in b1]
    assert len(b0) == 32 // 4
    for batch in b0:
        for qid, pos, negs in batch["global"]:
            assert pos in star.data.qrels[qid] and len(negs) == 2
            assert not set(negs) & set(star.data.qrels[qid])
    loss, logs = star.loss(enc, b0[0])
    assert loss.ndim == 0 and loss.item() > 0
    # the logged scores by hand: each query against its positive and its own first hard negative
    import numpy as np

    local = b0[0]["local"]
    q = enc.encode_queries([star.data.queries[x] for x, _, _ in local], precision="fp32")
    p = enc.encode_docs([star.data.corpus[d].contents for _, d, _ in local], precision="fp32")
    n = enc.encode_docs([star.data.corpus[negs[0]].contents for _, _, negs in local], precision="fp32")
    s_pos, s_neg = (q * p).sum(1), (q * n).sum(1)
    assert logs["pos_score"] == pytest.approx(float(s_pos.mean()), abs=1e-5)
    assert logs["hard_neg_score"] == pytest.approx(float(s_neg.mean()), abs=1e-5)
    assert logs["acc_vs_own_hard"] == pytest.approx(float(np.mean(s_pos > s_neg)))


def test_star_shared_positive_is_masked(toy, tiny_model, tmp_path):
    """q0 has positives d0 and d1; when q1 (positive d1) shares the batch, d1 is not a negative of q0."""
    from dretriever.encoder import BiEncoder

    neg = write_random_negatives(toy, tmp_path / "neg.jsonl")
    args, star = _star(toy, neg, tiny_model, tmp_path / "o")
    enc = BiEncoder.from_pretrained(tiny_model)
    star.setup(enc, _Acc())
    batch = {"global": [("q0", "d0", ["d5"]), ("q1", "d1", ["d6"])], "local": None}
    batch["local"] = batch["global"]
    captured = {}
    import dretriever.train.star as star_mod

    real = star_mod.pairwise_softmax_loss

    def spy(q, pos, labels, rand_mask, neg, hard_mask, t):
        captured.update(rand_mask=rand_mask, hard_mask=hard_mask, labels=labels)
        return real(q, pos, labels, rand_mask, neg, hard_mask, t)

    star_mod.pairwise_softmax_loss = spy
    try:
        star.loss(enc, batch)
    finally:
        star_mod.pairwise_softmax_loss = real
    assert captured["rand_mask"].tolist() == [[False, False], [True, False]]  # d0 is a fine negative for q1
    assert captured["hard_mask"].tolist() == [[True, True], [True, True]]
    assert captured["labels"].tolist() == [0, 1]


def test_star_softmax_loss_is_cross_entropy_over_valid_candidates(toy, tiny_model, tmp_path):
    """loss=softmax: per query, -log softmax over its positive and every valid negative (d1 dropped for q0)."""
    import torch

    from dretriever.encoder import BiEncoder

    neg = write_random_negatives(toy, tmp_path / "neg.jsonl")
    _, star = _star(toy, neg, tiny_model, tmp_path / "o", loss="softmax")
    enc = BiEncoder.from_pretrained(tiny_model).eval()
    star.setup(enc, _Acc())
    batch = {"global": [("q0", "d0", ["d5"]), ("q1", "d1", ["d6"])]}
    batch["local"] = batch["global"]
    with torch.no_grad():
        loss, _ = star.loss(enc, batch)
        corpus, queries = star.data.corpus, star.data.queries
        q = enc.embed(enc.tokenize([queries["q0"], queries["q1"]], "query"), "query")
        d = enc.embed(enc.tokenize([corpus[x].contents for x in ("d0", "d1", "d5", "d6")], "doc"), "doc")
    s = (q @ d.T / 0.05).tolist()
    # q0: positive d0; d1 is also relevant to q0, so only d5 and d6 compete
    l0 = -s[0][0] + torch.logsumexp(torch.tensor([s[0][0], s[0][2], s[0][3]]), 0).item()
    # q1: positive d1 against d0, d5 and d6
    l1 = -s[1][1] + torch.logsumexp(torch.tensor(s[1]), 0).item()
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_star_rejects_unknown_loss(toy, tiny_model, tmp_path):
    from dretriever.errors import DretrieverError

    neg = write_random_negatives(toy, tmp_path / "neg.jsonl")
    with pytest.raises(DretrieverError, match="loss"):
        _star(toy, neg, tiny_model, tmp_path / "o", loss="hinge")


def test_train_command_runs_and_saves(toy, tiny_model, tmp_path):
    from dretriever.cli import main
    from dretriever.encoder import BiEncoder

    neg = write_random_negatives(toy, tmp_path / "neg.jsonl")
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "star.yaml", method="star", model=str(tiny_model), output_dir=str(out),
                          data=str(toy), negatives=str(neg), neg_depth=10, temperature=0.05, batch_size=8,
                          epochs=2, lr=1e-3, precision="fp32", dev_queries=8, dev_corpus=0, progress=False)
    assert main(["train", str(recipe)]) == 0
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    devs = [r for r in rows if "dev_ndcg@10" in r]
    assert len(steps) == 2 * (24 // 8)  # 8 dev queries carved from 32
    assert len(devs) == 3  # start + 2 epoch ends
    # linear decay from 1e-3 over 6 steps, no warm-up (int(0.1 * 6) = 0); the log holds the rate after each step
    assert [r["lr"] for r in steps] == pytest.approx([1e-3 * (6 - s) / 6 for s in range(1, 7)], abs=1e-12)
    assert [r["step"] for r in steps] == list(range(1, 7)) and all(r["samples_per_s"] > 0 for r in steps)
    for sub in ("final", "best"):
        enc = BiEncoder.from_pretrained(out / sub)
        assert enc.encode_queries(["protein cell"], precision="fp32").shape == (1, 32)
    assert (out / "training_curve.png").stat().st_size > 1000
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 6


def test_star_temperature_auto_follows_the_encoders_normalisation(toy, tiny_model, tmp_path, caplog):
    """None (the default): 0.05 for an L2-normalising encoder, 1.0 for raw inner products; a set value wins."""
    import dataclasses
    import logging

    import torch

    from dretriever.encoder import BiEncoder
    from dretriever.errors import DretrieverError
    from dretriever.train.star import Star, StarArgs

    neg = write_random_negatives(toy, tmp_path / "neg.jsonl")
    assert StarArgs(negatives=str(neg)).temperature is None
    resolved = {}
    for normalize in (True, False):
        _, star = make_method(Star, StarArgs, "star", tiny_model, toy, tmp_path / "o", dict(negatives=str(neg)))
        enc = BiEncoder.from_pretrained(tiny_model).eval()
        enc.config.normalize = normalize
        with caplog.at_level(logging.INFO, logger="dretriever.train.temperature"):
            star.setup(enc, _Acc())
        resolved[normalize] = star.args.temperature
        # the loss divides by the resolved value: equal to the loss with that value set explicitly
        _, fixed = _star(toy, neg, tiny_model, tmp_path / "o2", temperature=star.args.temperature)
        fixed.setup(enc, _Acc())
        batch = star.batches(0)[0]
        with torch.no_grad():
            assert star.loss(enc, batch)[0].item() == pytest.approx(fixed.loss(enc, batch)[0].item(), rel=1e-6)
    assert resolved == {True: 0.05, False: 1.0}
    assert "star: temperature 0.05 (auto" in caplog.text and "star: temperature 1 (auto" in caplog.text
    _, explicit = _star(toy, neg, tiny_model, tmp_path / "o3", temperature=0.5)
    explicit.setup(BiEncoder.from_pretrained(tiny_model), _Acc())
    assert explicit.args.temperature == 0.5
    with pytest.raises(DretrieverError, match="temperature"):
        StarArgs(negatives=str(neg), temperature=-1.0)
    for f in dataclasses.fields(StarArgs):
        assert "default" in f.metadata["help"], f.name
