"""Contriever: crops and deletion, MoCo queue update and divisibility check, momentum, a short training run."""

import json

import numpy as np
import pytest
import torch

from tests.train_helpers import make_toy_beir, write_recipe

from dretriever.data.cropping import chunk, delete_tokens, pad_with_specials, random_crop  # noqa: E402
from dretriever.errors import DretrieverError  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_beir(tmp_path_factory.mktemp("toy"), n_docs=64)


def test_crops_are_contiguous_and_sized():
    rng = np.random.default_rng(0)
    ids = list(range(100))
    for _ in range(200):
        c = random_crop(ids, 0.1, 0.5, rng)
        assert 10 <= len(c) <= 50
        assert c == list(range(c[0], c[0] + len(c)))
    assert chunk(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk(list(range(10)), 4, min_length=3) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_token_deletion_rate():
    rng = np.random.default_rng(0)
    kept = sum(len(delete_tokens(list(range(1000)), 0.1, rng)) for _ in range(20)) / 20000
    assert 0.88 < kept < 0.92
    assert delete_tokens([1, 2, 3], 0.0, rng) == [1, 2, 3]
    assert len(delete_tokens([7], 0.99, rng)) == 1  # never empty


def test_pad_with_specials(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    batch = pad_with_specials([[5, 6, 7], [8]], tok, max_length=16)
    assert batch["input_ids"][0].tolist() == [tok.cls_token_id, 5, 6, 7, tok.sep_token_id]
    assert batch["input_ids"][1].tolist()[:3] == [tok.cls_token_id, 8, tok.sep_token_id]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


class _Acc:
    def __init__(self, n=1, r=0):
        self.num_processes, self.process_index = n, r


def _method(toy, tiny_model, tmp_path, **over):
    from dretriever.train.config import TrainArgs
    from dretriever.train.contriever import Contriever, ContrieverArgs

    ta = TrainArgs(method="contriever", model=str(tiny_model), output_dir=str(tmp_path), data=str(toy),
                   batch_size=over.pop("batch_size", 4), precision="fp32")
    return Contriever(ContrieverArgs(**over), ta)


def test_queue_size_must_divide_by_global_batch(toy, tiny_model, tmp_path):
    from dretriever.encoder import BiEncoder

    enc = BiEncoder.from_pretrained(tiny_model)
    m = _method(toy, tiny_model, tmp_path, mode="moco", queue_size=12, batch_size=4)
    with pytest.raises(DretrieverError, match="queue_size"):
        m.setup(enc, _Acc(n=2))  # global batch 8 does not divide 12
    m = _method(toy, tiny_model, tmp_path, mode="moco", queue_size=16, batch_size=4)
    m.setup(enc, _Acc(n=2))  # 16 % 8 == 0


def test_moco_queue_and_momentum_update(toy, tiny_model, tmp_path):
    from dretriever.encoder import BiEncoder

    enc = BiEncoder.from_pretrained(tiny_model)
    m = _method(toy, tiny_model, tmp_path, mode="moco", queue_size=8, momentum=0.9, batch_size=4)
    m.setup(enc, _Acc())
    before = m.queue.clone()
    batch = m.batches(0)[0]
    loss, logs = m.loss(enc, batch)
    keys = m.pending[0].clone()
    assert keys.shape == (4, enc.dim)
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(4))
    # the loss is InfoNCE of each query against its key and the queue
    q = enc.embed(__import__("dretriever.data.cropping", fromlist=["x"]).pad_with_specials(
        [x for x, _ in batch], enc.tokenizer, m.max_length), "query")
    expected = torch.nn.functional.cross_entropy(
        torch.cat([(q * keys).sum(-1, keepdim=True), q @ before.T], 1) / 0.05, torch.zeros(4, dtype=torch.long))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    # simulate an optimizer step: shift the trained weights, then after_step
    old_k = [p.clone() for p in m.key_encoder.parameters()]
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.5)
    m.after_step(enc)
    for pk, ok, pq in zip(m.key_encoder.parameters(), old_k, enc.parameters()):
        torch.testing.assert_close(pk, 0.9 * ok + 0.1 * pq)
    torch.testing.assert_close(m.queue[:4], keys)
    torch.testing.assert_close(m.queue[4:], before[4:])
    assert m.ptr == 4 and m.pending == []
    # the next push fills the rest and wraps the pointer to 0
    m.enqueue(keys * 0 + 1)
    assert m.ptr == 0 and torch.all(m.queue[4:] == 1)
    # state round trip
    state = m.state_dict()
    m2 = _method(toy, tiny_model, tmp_path, mode="moco", queue_size=8, momentum=0.9, batch_size=4)
    m2.setup(BiEncoder.from_pretrained(tiny_model), _Acc())
    m2.load_state_dict(state)
    torch.testing.assert_close(m2.queue, m.queue)
    assert m2.ptr == m.ptr


def test_batches_do_not_depend_on_process_count(toy, tiny_model, tmp_path):
    from dretriever.encoder import BiEncoder

    enc = BiEncoder.from_pretrained(tiny_model)
    one = _method(toy, tiny_model, tmp_path, batch_size=8)
    one.setup(enc, _Acc())
    halves = []
    for r in range(2):
        m = _method(toy, tiny_model, tmp_path, batch_size=4)
        m.setup(enc, _Acc(n=2, r=r))
        halves.append(m.batches(3)[1])
    assert one.batches(3)[1] == halves[0] + halves[1]
    assert one.batches(3)[1] != one.batches(4)[1]


def test_inbatch_training_lowers_the_loss(toy, tiny_model, tmp_path):
    from dretriever.cli import main

    out = tmp_path / "inbatch"
    recipe = write_recipe(tmp_path / "c.yaml", method="contriever", mode="inbatch", model=str(tiny_model),
                          data=str(toy), output_dir=str(out), batch_size=16, epochs=6, lr=2e-3, warmup=0.0,
                          token_deletion=0.1, precision="fp32", progress=False, seed=0)
    assert main(["train", str(recipe)]) == 0
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    assert (out / "final" / "config.json").is_file()


def test_moco_training_checkpoints_the_queue(toy, tiny_model, tmp_path):
    from dretriever.cli import main

    out = tmp_path / "moco"
    recipe = write_recipe(tmp_path / "c.yaml", method="contriever", mode="moco", model=str(tiny_model),
                          data=str(toy), output_dir=str(out), batch_size=16, max_steps=3, save_steps=3, lr=1e-3,
                          queue_size=32, momentum=0.9, precision="fp32", progress=False, seed=0)
    assert main(["train", str(recipe)]) == 0
    state = torch.load(out / "checkpoints" / "step-0000003" / "method-0.pt", weights_only=False)
    assert state["queue"].shape == (32, 32) and state["ptr"] == (3 * 16) % 32
    assert "key_encoder" in state
