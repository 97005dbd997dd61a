"""The gradient cache (issue 27 item 9): chunks trimmed exactly whichever side the tokenizer pads, and dropout
masks replayed in the second pass, so cached gradients equal un-cached ones."""

import random

import pytest
import torch

from dretriever.encoder import BiEncoder
from dretriever.train.encoder_view import EncoderView
from dretriever.train.gradcache import CachedEncoder, chunks
from dretriever.train.losses import contrastive_loss
from tests.train_helpers import WORDS

CHUNK = 3


def _texts(n: int, seed: int) -> list[str]:
    """Texts of 1 to 20 words, so that every chunk carries padding."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(WORDS, rng.randint(1, 20))) for _ in range(n)]


def _step(view, enc, queries, docs):
    """One in-batch contrastive step through ``view``: its loss and the encoder's parameter gradients."""
    enc.zero_grad(set_to_none=True)
    q = view.embed(enc.tokenize(queries, "query"), "query")
    d = view(enc.tokenize(docs, "doc"), "doc")
    loss = contrastive_loss(q, d, torch.arange(len(q)), 0.05)
    view.backward(loss)
    return loss.item(), {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}


def _assert_same_gradients(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-3, atol=1e-6, msg=n)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_chunks_drop_only_the_trailing_columns_that_are_padding_in_every_row(tiny_model, padding):
    enc = BiEncoder.from_pretrained(tiny_model)
    enc.tokenizer.padding_side = padding
    batch = enc.tokenize(_texts(8, 0), "doc")
    width, lengths = batch["input_ids"].shape[1], batch["attention_mask"].sum(1)
    subs = chunks(batch, CHUNK)
    assert [len(s["input_ids"]) for s in subs] == [3, 3, 2]
    for i, sub in enumerate(subs):
        rows = slice(i * CHUNK, (i + 1) * CHUNK)
        # right padding: the chunk's longest row; left padding: nothing (the real tokens would change position)
        cut = int(lengths[rows].max()) if padding == "right" else width
        assert sub.keys() == {"input_ids", "attention_mask", "token_type_ids"}
        for k, v in sub.items():
            assert torch.equal(v, batch[k][rows, :cut]), (i, k)
    if padding == "right":
        assert min(s["input_ids"].shape[1] for s in subs) < width  # the trimming was put to the test


@pytest.mark.parametrize("padding", ["right", "left"])
def test_cached_gradients_equal_plain_ones_whichever_side_pads(tiny_model, padding):
    """With left padding the old trimming kept a row's first ``longest`` columns: padding, not the text."""
    enc = BiEncoder.from_pretrained(tiny_model).eval()
    enc.tokenizer.padding_side = padding
    queries, docs = _texts(8, 1), _texts(8, 2)
    loss, plain = _step(EncoderView(enc), enc, queries, docs)
    cached_loss, cached = _step(CachedEncoder(enc, CHUNK), enc, queries, docs)
    assert cached_loss == pytest.approx(loss, rel=1e-5)
    _assert_same_gradients(cached, plain)


class _Chunked(EncoderView):
    """The un-cached pass over the cached pass's chunks: the same forwards in the same order (so the same dropout
    draws from the same seed), each kept with its graph."""

    def embed(self, batch, side):
        return torch.cat([self.encoder.embed(sub, side) for sub in chunks(batch, CHUNK)])


def test_dropout_masks_are_replayed_so_cached_gradients_equal_uncached_ones(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model)
    enc.set_dropout(0.2)
    enc.train()
    queries, docs = _texts(8, 3), _texts(8, 4)
    torch.manual_seed(7)
    loss, uncached = _step(_Chunked(enc), enc, queries, docs)
    torch.manual_seed(7)
    cached_loss, cached = _step(CachedEncoder(enc, CHUNK), enc, queries, docs)
    assert cached_loss == pytest.approx(loss, rel=1e-6)
    _assert_same_gradients(cached, uncached)
    # dropout is really on: other masks (another seed) give other gradients
    torch.manual_seed(8)
    other_loss, other = _step(_Chunked(enc), enc, queries, docs)
    assert other_loss != pytest.approx(loss, rel=1e-3)
    assert max(float((other[n] - uncached[n]).abs().max() / uncached[n].abs().max()) for n in other) > 0.05
