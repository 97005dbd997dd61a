"""Contriever: stream windows, crops and deletion, MoCo queue update, masking of a query's own window and
documents (in the queue and in the batch), divisibility check, momentum, a short training run."""

import json
import random

import numpy as np
import pytest
import torch

from tests.train_helpers import WORDS, make_toy_beir, write_recipe

from dretriever.data.cropping import TokenStream, delete_tokens, pad_with_specials, random_crop  # noqa: E402
from dretriever.errors import DretrieverError  # noqa: E402
from dretriever.train.contriever import document_groups, shared_document_mask  # noqa: E402
from dretriever.train.losses.contrastive import moco_contrastive  # noqa: E402

L = 16  # the tests' window length (tokens)


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


def test_windows_are_exact_length_slices_of_the_stream():
    s = TokenStream([[1, 2, 3], [], [4, 5], [6, 7, 8, 9, 10]])
    assert s.tokens.tolist() == list(range(1, 11))
    # (10 - 3 + 1) // 3 = 2 windows of 3 tokens at every offset in [0, 3): none cut short
    assert s.window_starts(3, 0).tolist() == [0, 3]
    assert s.window_starts(3, 2).tolist() == [2, 5]
    # tokens 3, 4, 5 lie in documents 0 and 2 (the empty document 1 holds none); tokens 6-8 in document 3
    assert s.documents(2, 3) == [0, 2]
    assert s.documents(5, 3) == [3]
    assert s.documents(0, 3) == [0]


def _scifact_like(root, n_docs=80, seed=0):
    """A BEIR folder whose documents' lengths spread like SciFact's: many short, a few very long ones, and
    two pairs of identical texts (as NFCorpus's duplicates)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.choice((1, 3, 5, 9, 20, 40, 90)))) for _ in range(n_docs)]
    docs[10], docs[30] = docs[3], docs[20]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(docs)))
    return root


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
    return Contriever(ContrieverArgs(**{"chunk_length": L, **over}), ta)


def test_every_crop_is_at_least_ratio_min_of_a_window(tmp_path, tiny_model):
    """Issue 27 item 2: per-document chunks kept tails down to 8 tokens, so crops of 1-4 tokens; windows of
    the concatenated stream make every crop at least int(ratio_min x chunk_length) tokens."""
    from dretriever.encoder import BiEncoder

    data = _scifact_like(tmp_path / "sf")
    enc = BiEncoder.from_pretrained(tiny_model)
    m = _method(data, tiny_model, tmp_path, chunk_length=64, ratio_min=0.1, ratio_max=0.5, token_deletion=0.0)
    m.setup(enc, _Acc())
    tokens = m.stream.tokens.tolist()
    n = (len(tokens) - 64 + 1) // 64
    for epoch in range(3):
        windows = m.windows(epoch)
        assert len(windows) == n and len(set(windows.tolist())) == n
        assert len({int(w) % 64 for w in windows}) == 1  # one offset per epoch
        crops = [t for b in m.batches(epoch) for t in b]
        assert len(crops) == n // 4 * 4
        for q, k, w in crops:
            window = tokens[w:w + 64]
            assert len(window) == 64
            for c in (q, k):
                assert 6 <= len(c) <= 32  # int(0.1 x 64) .. int(0.5 x 64)
                assert any(window[i:i + len(c)] == c for i in range(64 - len(c) + 1))


def test_document_groups_and_shared_document_mask():
    assert document_groups(["a", "b", "a", "c", "b"]).tolist() == [0, 1, 0, 3, 1]
    t = torch.tensor
    q_windows, q_groups = t([0, 50]), t([[0, 1], [7, -1]])
    k_windows = t([0, 90, 50, 20, -1, 30])
    k_groups = t([[0, -1, -1], [4, 1, -1], [7, -1, -1], [3, -1, -1], [-1, -1, -1], [-1, -1, -1]])
    # query 0 (groups 0, 1): its own window 0, and key 1 sharing group 1; query 1: its window 50 (group 7)
    # unknown ids (-1) never match, though both sides hold -1 paddings
    assert shared_document_mask(q_windows, q_groups, k_windows, k_groups).tolist() == [
        [True, True, False, False, False, False], [False, False, True, False, False, False]]


def test_moco_mask_drops_queue_columns():
    g = torch.Generator().manual_seed(0)
    q, k, queue = (torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1) for s in ((3, 8), (3, 8), (6, 8)))
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[2, :] = True  # every queue key dropped: only the positive is left, loss 0 for that row
    rows = [moco_contrastive(q[i:i + 1], k[i:i + 1], queue[~mask[i]], 0.05) for i in range(3)]
    assert rows[2].item() == pytest.approx(0.0, abs=1e-6)
    assert moco_contrastive(q, k, queue, 0.05, mask).item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-6)
    assert moco_contrastive(q, k, queue, 0.05, mask).item() != pytest.approx(moco_contrastive(q, k, queue, 0.05).item())


def _sharing(m, q_windows, k_windows):
    """(B, K) bool from first principles: key window shares a token's document group with the query window
    (or the key is the query's own window); window ids < 0 are unknown."""
    doc_of = np.repeat(np.arange(len(m.stream.lengths)), m.stream.lengths)
    groups = lambda w: {int(m.groups[d]) for d in doc_of[w:w + m.args.chunk_length]}  # noqa: E731
    return torch.tensor([[kw >= 0 and (kw == qw or bool(groups(qw) & groups(kw))) for kw in k_windows]
                         for qw in q_windows])


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
    keys = m.pending[0][0].clone()
    assert keys.shape == (4, enc.dim)
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(4))
    # the loss is InfoNCE of each query against its key and the queue
    q = enc.embed(pad_with_specials([x for x, _, _ in batch], enc.tokenizer, m.max_length), "query")
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
    # each key is queued with its window and document groups; the initial random keys are unknown (-1)
    assert m.queue_windows[:4].tolist() == [w for _, _, w in batch]
    torch.testing.assert_close(m.queue_groups[:4], m.window_groups(m.queue_windows[:4]))
    assert torch.all(m.queue_windows[4:] == -1) and torch.all(m.queue_groups[4:] == -1)
    # the next push fills the rest and wraps the pointer to 0
    m.enqueue(keys * 0 + 1)
    assert m.ptr == 0 and torch.all(m.queue[4:] == 1) and torch.all(m.queue_windows[4:] == -1)
    # state round trip, ids included
    m.queue_windows[5], m.queue_groups[6, 0] = 123, 7
    state = m.state_dict()
    m2 = _method(toy, tiny_model, tmp_path, mode="moco", queue_size=8, momentum=0.9, batch_size=4)
    m2.setup(BiEncoder.from_pretrained(tiny_model), _Acc())
    m2.load_state_dict(state)
    torch.testing.assert_close(m2.queue, m.queue)
    assert torch.equal(m2.queue_windows, m.queue_windows) and torch.equal(m2.queue_groups, m.queue_groups)
    assert m2.ptr == m.ptr
    # a checkpoint written before the ids were stored loads with every id unknown
    m2.load_state_dict({k: v for k, v in state.items() if k not in ("queue_windows", "queue_groups")})
    torch.testing.assert_close(m2.queue, m.queue)
    assert torch.all(m2.queue_windows == -1) and torch.all(m2.queue_groups == -1) and m2.queue_groups.shape == (8, 1)


def test_moco_queue_longer_than_an_epoch_masks_stale_keys(tmp_path, tiny_model):
    """Issue 27 item 1: a queue longer than an epoch holds keys of each query's own window (and documents)
    from the last epoch; the loss equals the loss with those columns removed from the queue."""
    from dretriever.encoder import BiEncoder

    data = _scifact_like(tmp_path / "sf")
    enc = BiEncoder.from_pretrained(tiny_model)
    m = _method(data, tiny_model, tmp_path, mode="moco", batch_size=4, queue_size=4 * 256, chunk_length=L)
    m.setup(enc, _Acc())
    epoch0 = m.batches(0)
    assert len(epoch0) * 4 < m.args.queue_size  # the whole epoch fits in the queue
    for batch in epoch0:
        m.loss(enc, batch)
        m.after_step(enc)  # no optimizer step: the key encoder stays equal to the trained one
    batch = m.batches(1)[0]
    q_windows = [w for _, _, w in batch]
    stale = _sharing(m, q_windows, m.queue_windows.tolist())
    assert stale.sum(1).min() >= 1  # every query has keys of its own window's tokens in the queue
    assert stale[:, len(epoch0) * 4:].sum() == 0  # (the initial random keys are never stale)
    loss, logs = m.loss(enc, batch)
    m.pending = []
    assert logs["masked"] == pytest.approx(stale.sum(1).float().mean().item())
    with torch.no_grad():
        q = enc.embed(pad_with_specials([x for x, _, _ in batch], enc.tokenizer, m.max_length), "query")
        k = enc.embed(pad_with_specials([y for _, y, _ in batch], enc.tokenizer, m.max_length), "doc")
    rows = [moco_contrastive(q[i:i + 1], k[i:i + 1], m.queue[~stale[i]], 0.05) for i in range(4)]
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx(moco_contrastive(q, k, m.queue, 0.05).item(), rel=1e-3)


def test_inbatch_masks_other_windows_of_the_query_documents(tmp_path, tiny_model):
    """Windows that share a document (or a duplicate's text) with a query's window are not its negatives."""
    from dretriever.train.losses.contrastive import contrastive_loss
    from dretriever.encoder import BiEncoder

    data = _scifact_like(tmp_path / "sf")
    enc = BiEncoder.from_pretrained(tiny_model)
    m = _method(data, tiny_model, tmp_path, batch_size=32, chunk_length=L)
    m.setup(enc, _Acc())
    batch = m.batches(0)[0]
    windows = [w for _, _, w in batch]
    shared = _sharing(m, windows, windows)
    shared.fill_diagonal_(False)
    assert shared.any()
    loss, logs = m.loss(enc, batch)
    assert logs["masked"] == pytest.approx(shared.sum(1).float().mean().item())
    with torch.no_grad():
        q = enc.embed(pad_with_specials([x for x, _, _ in batch], enc.tokenizer, m.max_length), "query")
        k = enc.embed(pad_with_specials([y for _, y, _ in batch], enc.tokenizer, m.max_length), "doc")
    rows = []
    for i in range(len(batch)):
        keep = ~shared[i]
        rows.append(contrastive_loss(q[i:i + 1], k[keep], torch.tensor([int(keep[:i].sum())]), 0.05))
    assert loss.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx(contrastive_loss(q, k, torch.arange(len(batch)), 0.05).item(), rel=1e-3)


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
    # the toy's words are drawn at random, so two crops of a window share only the tokens where they
    # overlap: long crops (60-100 % of a window) overlap enough to learn from in 18 steps
    recipe = write_recipe(tmp_path / "c.yaml", method="contriever", mode="inbatch", model=str(tiny_model),
                          data=str(toy), output_dir=str(out), batch_size=16, epochs=6, lr=2e-3, warmup=0.0,
                          chunk_length=L, ratio_min=0.6, ratio_max=1.0, token_deletion=0.1, precision="fp32",
                          progress=False, seed=0)
    assert main(["train", str(recipe)]) == 0
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 18 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses
    assert (out / "final" / "config.json").is_file()


def test_moco_training_checkpoints_the_queue(toy, tiny_model, tmp_path):
    from dretriever.cli import main

    out = tmp_path / "moco"
    recipe = write_recipe(tmp_path / "c.yaml", method="contriever", mode="moco", model=str(tiny_model),
                          data=str(toy), output_dir=str(out), batch_size=16, max_steps=3, save_steps=3, lr=1e-3,
                          queue_size=32, momentum=0.9, precision="fp32", progress=False, seed=0, chunk_length=L)
    assert main(["train", str(recipe)]) == 0
    state = torch.load(out / "checkpoints" / "step-0000003" / "method-0.pt", weights_only=False)
    assert state["queue"].shape == (32, 32) and state["ptr"] == (3 * 16) % 32
    assert state["queue_windows"].shape == (32,) and (state["queue_windows"] >= 0).sum() == 32  # 3 x 16 keys pushed
    assert "key_encoder" in state
