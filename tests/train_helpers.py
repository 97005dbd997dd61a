"""A toy BEIR dataset (train qrels) and small recipe writers for the training tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

WORDS = ("protein cell gene tumor virus immune brain heart blood insulin receptor enzyme neuron muscle liver "
         "kidney lung bone skin stem signal pathway mutation therapy drug dose trial risk infection vaccine "
         "antibody membrane mitochondria metabolism hormone calcium sodium oxygen glucose lipid").split()


def make_toy_beir(root: Path, n_docs: int = 48, n_queries: int = 32, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    docs = []
    for i in range(n_docs):
        words = rng.sample(WORDS, 12)
        docs.append({"_id": f"d{i}", "title": f"doc {i}", "text": " ".join(words)})
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries, qrels = [], []
    for i in range(n_queries):
        words = docs[i]["text"].split()[:4]
        queries.append({"_id": f"q{i}", "text": " ".join(words)})
        qrels.append((f"q{i}", f"d{i}", 1))
        if i % 5 == 0:  # a few queries with two positives
            qrels.append((f"q{i}", f"d{(i + 1) % n_docs}", 1))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in qrels))
    return root


def write_random_negatives(data: Path, path: Path, depth: int = 10, seed: int = 0) -> Path:
    """Negatives as `dretriever mine` writes them, drawn at random (no index needed)."""
    from dretriever.data.beir import load_beir
    from dretriever.data.negatives import write_negatives

    ds = load_beir(data, split="train")
    rng = random.Random(seed)
    rows = []
    for qid, judged in ds.qrels.items():
        cands = [d for d in ds.corpus if d not in judged]
        rng.shuffle(cands)
        rows.append({"qid": qid, "positives": sorted(judged), "negatives": cands[:depth], "scores": [0.0] * depth})
    write_negatives(path, rows, {"random": True})
    return path


def write_recipe(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def make_method(method_cls, args_cls, name: str, model, data, out, method_defaults: dict, **over):
    """``(TrainArgs, method)`` for a test: fields in ``over`` go to whichever dataclass declares them."""
    from dretriever.train.config import TrainArgs

    targs = dict(method=name, model=str(model), output_dir=str(out), data=str(data), batch_size=4,
                 precision="fp32", progress=False)
    targs.update({k: v for k, v in over.items() if k in TrainArgs.__dataclass_fields__})
    margs = {**method_defaults, **{k: v for k, v in over.items() if k in args_cls.__dataclass_fields__}}
    return TrainArgs(**targs), method_cls(args_cls(**margs), TrainArgs(**targs))


MANY_POSITIVES = (300, 120, 40, 5, 1, 1, 1, 2)  # positives per training query, cycled


def make_many_positives_beir(root: Path, n_docs: int = 360, n_queries: int = 16, n_dev: int = 6,
                             seed: int = 0) -> Path:
    """A BEIR folder whose training queries have many graded positives (cycling :data:`MANY_POSITIVES`:
    300, 120, 40, 5, 1, 1, 1, 2 judged documents, grades alternating 2 and 1, the first grade 2) and a
    ``qrels/dev.tsv`` with ``n_dev`` other queries (3 positives each, grades 2, 1, 1)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    docs = [{"_id": f"d{i}", "title": f"doc {i}", "text": " ".join(rng.sample(WORDS, 12))} for i in range(n_docs)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries, train, dev = [], [], []
    for i in range(n_queries + n_dev):
        qid = f"q{i}"
        first = (7 * i) % n_docs
        queries.append({"_id": qid, "text": " ".join(docs[first]["text"].split()[:4])})
        count = MANY_POSITIVES[i % len(MANY_POSITIVES)] if i < n_queries else 3
        judged = [(first + 11 * k) % n_docs for k in range(count)]
        rows = [(qid, f"d{d}", 2 if k % 2 == 0 else 1) for k, d in enumerate(dict.fromkeys(judged))]
        if i >= n_queries:
            rows = [(qid, d, 2 if k == 0 else 1) for k, (_, d, _) in enumerate(rows)]
        (train if i < n_queries else dev).extend(rows)
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    header = "query-id\tcorpus-id\tscore\n"
    (root / "qrels" / "train.tsv").write_text(header + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in train))
    (root / "qrels" / "dev.tsv").write_text(header + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in dev))
    return root


def write_random_teacher(data: Path, path: Path, depth: int = 60, seed: int = 0) -> Path:
    """A teacher file (``dretriever teacher`` format) scoring every judged document of each training query
    and ``depth`` random others, with random scores (positives higher on average)."""
    from dretriever.data.beir import load_beir

    ds = load_beir(data, split="train")
    rng = random.Random(seed)
    with path.open("w") as f:
        for qid, judged in sorted(ds.qrels.items()):
            others = [d for d in ds.corpus if d not in judged]
            rng.shuffle(others)
            hits = [(d, 1.0 + rng.random()) for d in judged] + [(d, rng.random()) for d in others[:depth]]
            hits.sort(key=lambda x: -x[1])
            f.write(json.dumps({"qid": qid, "docids": [d for d, _ in hits], "scores": [s for _, s in hits]}) + "\n")
    return path


class SingleProcess:
    """What a method's ``setup`` reads of accelerate's state, for one process."""

    num_processes, process_index = 1, 0


def build_flat_index(corpus: Path, model: Path, out: Path) -> Path:
    """``dretriever index build`` of ``corpus`` into 2 Flat shards (fp32), asserting it succeeds."""
    from dretriever.cli import main

    assert main(["index", "build", "--corpus", str(corpus), "--output", str(out), "--model", str(model),
                 "--shards", "2", "--precision", "fp32"]) == 0
    return out
