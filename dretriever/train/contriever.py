"""Contriever (Izacard et al., "Unsupervised Dense Information Retrieval with Contrastive Learning", 2021).

Unsupervised: every chunk (``chunk_length`` tokens) of every corpus document gives, each epoch, two
independent random crops (ratio in [ratio_min, ratio_max]) with token deletion (probability
``token_deletion``); the two crops of one chunk are a positive pair. No labels are read.

Modes (as facebookresearch/contriever ``src/inbatch.py`` and ``src/moco.py``):
- ``inbatch``: both crops through the trained encoder; the second crops of all processes are gathered
  (differentiably) and each first crop is contrasted with all of them (InfoNCE, temperature).
- ``moco``: second crops through a momentum encoder (no gradient, ``momentum`` EMA of the trained one,
  updated after each optimizer step); negatives from a queue of past keys (``queue_size``, which must be a
  multiple of the global batch so the queue pointer always wraps exactly); the gathered keys of each step
  are enqueued after it.

Many positives: training reads no judgments, and each crop has exactly one positive (the other crop of
its chunk), so the number of judged documents per query never reaches the loss (a mean over crops,
:mod:`dretriever.train.losses.contrastive`); judged documents matter only to the dev evaluation, which
may use the dataset's own dev qrels (``dev_split``) and, as the document tower trains, encodes the dev
corpus at each evaluation.

Differences from the official code: chunks are taken per document rather than from one concatenated token
stream, and the queue is pushed after the optimizer step (the official code pushes right after the
forward; with one micro-batch per step the keys enqueued and the update order are the same).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cropping import chunk, delete_tokens, pad_with_specials, random_crop
from ..errors import DretrieverError
from . import distributed as du
from .config import check_file
from .data import load_corpus_cached
from .losses.contrastive import in_batch_contrastive, moco_contrastive

MODES = ("inbatch", "moco")


@dataclass
class ContrieverArgs:
    corpus: str = field(default="", metadata={"help": "corpus.jsonl to train on (default: data/corpus.jsonl)"})
    mode: str = field(default="inbatch", metadata={"help": "inbatch | moco"})
    chunk_length: int = 256
    min_chunk_tokens: int = field(default=8, metadata={"help": "shorter chunks are dropped"})
    ratio_min: float = 0.1
    ratio_max: float = 0.5
    token_deletion: float = field(default=0.1, metadata={"help": "probability of deleting each token"})
    temperature: float = 0.05
    queue_size: int = field(default=131072, metadata={"help": "MoCo queue (a multiple of the global batch)"})
    momentum: float = 0.9995
    max_chunks: int = field(default=0, metadata={"help": "use at most this many chunks (0: all)"})

    def __post_init__(self):
        if self.corpus:
            check_file("corpus", self.corpus)
        if self.mode not in MODES:
            raise DretrieverError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if not 0 < self.ratio_min <= self.ratio_max <= 1:
            raise DretrieverError(f"ratio_min/ratio_max: need 0 < ratio_min <= ratio_max <= 1, got "
                                  f"{self.ratio_min}, {self.ratio_max}")
        if not 0 <= self.token_deletion < 1:
            raise DretrieverError(f"token_deletion: must be in [0, 1), got {self.token_deletion}")
        if not self.temperature > 0:
            raise DretrieverError(f"temperature: must be positive, got {self.temperature}")
        if self.chunk_length < 4 or self.min_chunk_tokens < 1:
            raise DretrieverError("chunk_length: must be >= 4 (and min_chunk_tokens >= 1)")
        if self.queue_size <= 0:
            raise DretrieverError(f"queue_size: must be positive, got {self.queue_size}")
        if not 0 <= self.momentum < 1:
            raise DretrieverError(f"momentum: must be in [0, 1), got {self.momentum}")


ARGS = ContrieverArgs


def check_queue(queue_size: int, global_batch: int) -> None:
    if queue_size % global_batch:
        raise DretrieverError(f"queue_size: {queue_size} is not a multiple of the global batch {global_batch} "
                              f"(batch_size x processes)")


class Contriever:
    name = "contriever"

    def __init__(self, args: ContrieverArgs, train_args):
        self.args, self.train_args = args, train_args
        self.key_encoder = None
        self.queue = None
        self.ptr = 0
        self.pending: list[torch.Tensor] = []

    # ------------------------------------------------------------------ setup
    def setup(self, encoder, accelerator) -> None:
        a, ta = self.args, self.train_args
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.global_batch = ta.batch_size * self.world
        if a.mode == "moco":
            check_queue(a.queue_size, self.global_batch)
        if a.corpus:
            from ..data.beir import load_corpus
            corpus = load_corpus(a.corpus)
        elif ta.data:
            corpus = load_corpus_cached(ta.data)
        else:
            raise DretrieverError("corpus: Contriever needs a corpus (set corpus, or data to a BEIR folder)")
        self.tokenizer = encoder.tokenizer
        texts = [d.contents for d in corpus.values()]
        tokens = self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
        self.chunks = [c for ids in tokens for c in chunk(ids, a.chunk_length, a.min_chunk_tokens)]
        if a.max_chunks:
            rng = np.random.default_rng(ta.seed)
            keep = np.sort(rng.permutation(len(self.chunks))[:a.max_chunks])
            self.chunks = [self.chunks[i] for i in keep]
        if len(self.chunks) < self.global_batch:
            raise DretrieverError(f"batch_size: {len(self.chunks)} chunks < one global batch ({self.global_batch})")
        self.max_length = min(encoder.config.query_max_length, encoder.config.doc_max_length, a.chunk_length + 2)
        if a.mode == "moco":
            self.key_encoder = copy.deepcopy(encoder)
            for p in self.key_encoder.parameters():
                p.requires_grad_(False)
            g = torch.Generator().manual_seed(ta.seed)
            self.queue = F.normalize(torch.randn(a.queue_size, encoder.dim, generator=g), dim=-1).to(encoder.device)
            self.ptr = 0

    # ------------------------------------------------------------------ batches
    def batches(self, epoch: int):
        """Per global batch: crops for every chunk of it from a generator seeded by (seed, epoch, batch)."""
        ta = self.train_args
        order = np.random.default_rng([ta.seed, epoch]).permutation(len(self.chunks))
        n = len(order) // self.global_batch
        B = ta.batch_size
        return _LazyBatches(self, order, n, epoch, B)

    def _make_batch(self, order, index: int, epoch: int, B: int):
        a, ta = self.args, self.train_args
        rng = np.random.default_rng([ta.seed, epoch, index])
        ids = order[index * self.global_batch:(index + 1) * self.global_batch]
        pairs = []
        for c in ids:  # every rank draws the whole global batch: crops do not depend on the process count
            toks = self.chunks[c]
            q = delete_tokens(random_crop(toks, a.ratio_min, a.ratio_max, rng), a.token_deletion, rng)
            k = delete_tokens(random_crop(toks, a.ratio_min, a.ratio_max, rng), a.token_deletion, rng)
            pairs.append((q, k))
        return pairs[self.rank * B:(self.rank + 1) * B]

    # ------------------------------------------------------------------ loss
    def loss(self, encoder, batch):
        a = self.args
        q_in = pad_with_specials([q for q, _ in batch], self.tokenizer, self.max_length)
        k_in = pad_with_specials([k for _, k in batch], self.tokenizer, self.max_length)
        q = encoder.embed(q_in, "query")
        if a.mode == "inbatch":
            k = encoder.embed(k_in, "doc")
            loss = in_batch_contrastive(q, k, None, a.temperature, gather=True)
            with torch.no_grad():
                kk = du.all_gather_nograd(k.detach())
                labels = du.gathered_labels(q.shape[0], k.shape[0], q.device)
                acc = ((q.detach() @ kk.T).argmax(1) == labels).float().mean()
            return loss, {"acc": float(acc)}
        with torch.no_grad():
            k = self.key_encoder.embed(k_in, "doc")
        loss = moco_contrastive(q, k, self.queue, a.temperature)
        with torch.no_grad():
            l_pos = (q.detach() * k).sum(-1)
            l_neg = (q.detach() @ self.queue.T).max(1).values
            acc = (l_pos > l_neg).float().mean()
        self.pending.append(du.all_gather_nograd(k.detach().float()))
        return loss, {"acc": float(acc)}

    def trainable_parameters(self, encoder):
        return list(encoder.parameters())

    # ------------------------------------------------------------------ MoCo state
    @torch.no_grad()
    def after_step(self, encoder) -> None:
        if self.args.mode != "moco":
            return
        m = self.args.momentum
        for pk, pq in zip(self.key_encoder.parameters(), encoder.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        for keys in self.pending:
            self.enqueue(keys)
        self.pending = []

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        n = keys.shape[0]
        check_queue(self.queue.shape[0], n)
        self.queue[self.ptr:self.ptr + n] = keys.to(self.queue.dtype)
        self.ptr = (self.ptr + n) % self.queue.shape[0]

    def state_dict(self) -> dict:
        if self.args.mode != "moco":
            return {}
        return {"queue": self.queue.cpu(), "ptr": self.ptr, "key_encoder": self.key_encoder.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.args.mode != "moco" or not state:
            return
        self.queue = state["queue"].to(self.queue.device)
        self.ptr = int(state["ptr"])
        self.key_encoder.load_state_dict(state["key_encoder"])


class _LazyBatches:
    """A sized, re-iterable view of one epoch's batches (crops are drawn when a batch is reached)."""

    def __init__(self, method, order, n, epoch, B):
        self.method, self.order, self.n, self.epoch, self.B = method, order, n, epoch, B

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.method._make_batch(self.order, i, self.epoch, self.B)

    def __iter__(self):
        return (self[i] for i in range(self.n))
