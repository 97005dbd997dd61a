"""Contriever (Izacard et al., "Unsupervised Dense Information Retrieval with Contrastive Learning", 2021).

Unsupervised, as facebookresearch/contriever ``src/data.py``: the corpus's documents, tokenized without
special tokens, are concatenated in corpus order into one token stream, and each epoch cuts it into windows
of exactly ``chunk_length`` tokens from a random offset (a window may span documents; the final partial
window is dropped). Every window gives two independent random crops of ``max(1, int(chunk_length x
ratio))`` tokens, ratio ~ U(ratio_min, ratio_max), then token deletion (probability ``token_deletion``); the
two crops of one window are a positive pair. No labels are read.

Modes (as facebookresearch/contriever ``src/inbatch.py`` and ``src/moco.py``):
- ``inbatch``: both crops through the trained encoder; the second crops of all processes are gathered
  (differentiably) and each first crop is contrasted with all of them (InfoNCE, temperature).
- ``moco``: second crops through a momentum encoder (no gradient, ``momentum`` EMA of the trained one,
  updated after each optimizer step); negatives from a queue of past keys (``queue_size``, which must be a
  multiple of the global batch so the queue pointer always wraps exactly); the gathered keys of each step
  are enqueued after it, each with its window (start in the stream) and document groups.

False negatives are masked: a key is dropped from a query's softmax when it comes from the query's own
window or shares a document with it (a window may cover several documents: any shared one counts, not only
the one holding most of the window), where documents with identical texts count as one (a document group:
NFCorpus has 40 groups of duplicates). This covers the MoCo queue (on a corpus of a few thousand windows a
queue of 8,192 keys holds the query's own window from the last epoch) and the in-batch keys (other windows
of the query's documents). The query's own positive is never masked. Queue keys of unknown origin (the
initial random queue, a checkpoint written before the ids were stored) carry id -1 and are never masked.

Many positives: training reads no judgments, and each crop has exactly one positive (the other crop of
its window), so the number of judged documents per query never reaches the loss (a mean over crops,
:mod:`dretriever.train.losses.contrastive`); judged documents matter only to the dev evaluation, which
may use the dataset's own dev qrels (``dev_split``) and, as the document tower trains, encodes the dev
corpus at each evaluation.

Differences from the official code:
- the masking above: the official code masks nothing (its queue of 131,072 keys over billions of tokens
  never holds a key of the query's own window, and duplicates are rare there);
- every epoch has the same number of windows, ``(tokens - chunk_length + 1) // chunk_length`` (the official
  count is one more at small offsets), and the offset and order come from a generator seeded by (seed,
  epoch), so a resumed run draws the same windows and crops;
- a crop keeps at least one token (the official ``int(len * ratio)`` may be 0); documents are concatenated
  with no separator token;
- the queue is pushed after the optimizer step (the official code pushes right after the forward; with one
  micro-batch per step the keys enqueued and the update order are the same).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cropping import TokenStream, delete_tokens, pad_with_specials, random_crop
from ..errors import DretrieverError
from . import distributed as du
from .config import check_file
from .data import load_corpus_cached
from .losses.contrastive import contrastive_loss, moco_contrastive

MODES = ("inbatch", "moco")


@dataclass
class ContrieverArgs:
    corpus: str = field(default="", metadata={"help": "corpus.jsonl to train on (default '': data/corpus.jsonl)"})
    mode: str = field(default="inbatch", metadata={"help": "inbatch | moco (default inbatch)"})
    chunk_length: int = field(default=256, metadata={
        "help": "window length in tokens (default 256): the corpus's concatenated token stream is cut into "
                "windows of exactly this many tokens, each giving one positive pair of crops"})
    ratio_min: float = field(default=0.1, metadata={
        "help": "shortest crop, a fraction of chunk_length (default 0.1): every crop has at least "
                "max(1, int(ratio_min x chunk_length)) tokens before token deletion"})
    ratio_max: float = field(default=0.5, metadata={"help": "longest crop, a fraction of chunk_length (default 0.5)"})
    token_deletion: float = field(default=0.1, metadata={
        "help": "probability of deleting each token of a crop (default 0.1; a crop keeps at least one token)"})
    temperature: float = field(default=0.05, metadata={
        "help": "softmax temperature dividing the dot-product scores (default 0.05, unitless)"})
    queue_size: int = field(default=131072, metadata={
        "help": "MoCo queue length in keys (default 131072); a multiple of the global batch (batch_size x processes)"})
    momentum: float = field(default=0.9995, metadata={
        "help": "MoCo key-encoder EMA factor per optimizer step (default 0.9995, in [0, 1))"})
    max_chunks: int = field(default=0, metadata={
        "help": "windows per epoch, at most (default 0: all): the same window indices every epoch"})

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
        if self.chunk_length < 4:
            raise DretrieverError(f"chunk_length: must be >= 4, got {self.chunk_length}")
        if self.queue_size <= 0:
            raise DretrieverError(f"queue_size: must be positive, got {self.queue_size}")
        if not 0 <= self.momentum < 1:
            raise DretrieverError(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.max_chunks < 0:
            raise DretrieverError(f"max_chunks: must be >= 0, got {self.max_chunks}")


ARGS = ContrieverArgs


def check_queue(queue_size: int, global_batch: int) -> None:
    if queue_size % global_batch:
        raise DretrieverError(f"queue_size: {queue_size} is not a multiple of the global batch {global_batch} "
                              f"(batch_size x processes)")


def document_groups(texts: list[str]) -> np.ndarray:
    """One id per document: the index of the first document with the same text (duplicates share it)."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(t, i) for i, t in enumerate(texts)], dtype=np.int64)


def shared_document_mask(q_windows: torch.Tensor, q_groups: torch.Tensor, k_windows: torch.Tensor,
                         k_groups: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: key j comes from query i's window or shares a document group with it.

    Windows are (B,) and (K,) ids, groups (B, Wq) and (K, Wk) ids padded with -1; ids < 0 (unknown) never match.
    """
    mask = (q_windows[:, None] == k_windows[None, :]) & (k_windows >= 0)[None, :]
    for g in q_groups.T:  # one column of the queries' groups at a time: (B, K, Wk) booleans
        mask |= (k_groups[None, :, :] == g[:, None, None]).any(-1) & (g >= 0)[:, None]
    return mask


def _widen(ids: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(ids, (0, width - ids.shape[1]), value=-1)


class Contriever:
    name = "contriever"

    def __init__(self, args: ContrieverArgs, train_args):
        self.args, self.train_args = args, train_args
        self.key_encoder = None
        self.queue = self.queue_windows = self.queue_groups = None
        self.ptr = 0
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

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
        self.stream = TokenStream(self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"])
        self.groups = document_groups(texts)
        n = len(self.stream.window_starts(a.chunk_length, 0))
        self.subset = None
        if a.max_chunks and a.max_chunks < n:
            self.subset = np.sort(np.random.default_rng(ta.seed).permutation(n)[:a.max_chunks])
            n = a.max_chunks
        if n < self.global_batch:
            raise DretrieverError(f"batch_size: {n} windows of chunk_length={a.chunk_length} tokens < one global "
                                  f"batch ({self.global_batch})")
        self.max_length = min(encoder.config.query_max_length, encoder.config.doc_max_length, a.chunk_length + 2)
        if a.mode == "moco":
            self.key_encoder = copy.deepcopy(encoder)
            for p in self.key_encoder.parameters():
                p.requires_grad_(False)
            g = torch.Generator().manual_seed(ta.seed)
            self.queue = F.normalize(torch.randn(a.queue_size, encoder.dim, generator=g), dim=-1).to(encoder.device)
            self.queue_windows = torch.full((a.queue_size,), -1, dtype=torch.long, device=encoder.device)
            self.queue_groups = torch.full((a.queue_size, 1), -1, dtype=torch.long, device=encoder.device)
            self.ptr = 0

    # ------------------------------------------------------------------ batches
    def windows(self, epoch: int) -> np.ndarray:
        """Starts of this epoch's windows in the stream (offset from (seed, epoch)), in training order."""
        rng = np.random.default_rng([self.train_args.seed, epoch])
        starts = self.stream.window_starts(self.args.chunk_length, int(rng.integers(0, self.args.chunk_length)))
        if self.subset is not None:
            starts = starts[self.subset]
        return starts[rng.permutation(len(starts))]

    def batches(self, epoch: int):
        """Per global batch: crops for every window of it from a generator seeded by (seed, epoch, batch)."""
        order = self.windows(epoch)
        return _LazyBatches(self, order, len(order) // self.global_batch, epoch, self.train_args.batch_size)

    def _make_batch(self, order, index: int, epoch: int, B: int):
        """This process's ``(query crop, key crop, window start)`` triples."""
        a, ta = self.args, self.train_args
        rng = np.random.default_rng([ta.seed, epoch, index])
        triples = []
        for w in order[index * self.global_batch:(index + 1) * self.global_batch]:
            # every rank draws the whole global batch: crops do not depend on the process count
            toks = self.stream.tokens[w:w + a.chunk_length].tolist()
            q = delete_tokens(random_crop(toks, a.ratio_min, a.ratio_max, rng), a.token_deletion, rng)
            k = delete_tokens(random_crop(toks, a.ratio_min, a.ratio_max, rng), a.token_deletion, rng)
            triples.append((q, k, int(w)))
        return triples[self.rank * B:(self.rank + 1) * B]

    def window_groups(self, starts: torch.Tensor) -> torch.Tensor:
        """(n, W) long: the document groups each window covers, padded with -1 (W: the most of any row)."""
        rows = [sorted({int(self.groups[d]) for d in self.stream.documents(s, self.args.chunk_length)})
                for s in starts.tolist()]
        out = torch.full((len(rows), max(map(len, rows))), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r)
        return out.to(starts.device)

    # ------------------------------------------------------------------ loss
    def loss(self, encoder, batch):
        a = self.args
        q_in = pad_with_specials([q for q, _, _ in batch], self.tokenizer, self.max_length)
        k_in = pad_with_specials([k for _, k, _ in batch], self.tokenizer, self.max_length)
        q = encoder.embed(q_in, "query")
        windows = torch.tensor([w for _, _, w in batch], dtype=torch.long, device=q.device)
        all_windows = du.all_gather_nograd(windows)  # the gathered keys' windows, in rank order
        all_groups = self.window_groups(all_windows)
        start = du.rank() * len(batch)
        groups = all_groups[start:start + len(batch)]
        if a.mode == "inbatch":
            k = encoder.embed(k_in, "doc")
            labels = du.gathered_labels(q.shape[0], k.shape[0], q.device)
            mask = shared_document_mask(windows, groups, all_windows, all_groups)
            mask[torch.arange(len(labels), device=labels.device), labels] = False  # the positive is never masked
            loss = contrastive_loss(q, du.all_gather_with_grad(k), labels, a.temperature, mask)
            with torch.no_grad():
                scores = q.detach().float() @ du.all_gather_nograd(k.detach()).float().T
                acc = (scores.masked_fill(mask, float("-inf")).argmax(1) == labels).float().mean()
            return loss, {"acc": float(acc), "masked": float(mask.sum(1).float().mean())}
        with torch.no_grad(), encoder.autocast():  # the loop's precision (the loss itself runs in fp32)
            k = self.key_encoder.embed(k_in, "doc")
        mask = shared_document_mask(windows, groups, self.queue_windows, self.queue_groups)
        loss = moco_contrastive(q, k, self.queue, a.temperature, mask)
        with torch.no_grad():
            l_pos = (q.detach().float() * k.float()).sum(-1)
            l_neg = (q.detach().float() @ self.queue.float().T).masked_fill(mask, float("-inf")).max(1).values
            acc = (l_pos > l_neg).float().mean()
        self.pending.append((du.all_gather_nograd(k.detach().float()), all_windows, all_groups))
        return loss, {"acc": float(acc), "masked": float(mask.sum(1).float().mean())}

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
        for keys, windows, groups in self.pending:
            self.enqueue(keys, windows, groups)
        self.pending = []

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, windows: torch.Tensor | None = None,
                groups: torch.Tensor | None = None) -> None:
        """Push keys with their windows (n,) and document groups (n, W) (default -1: unknown)."""
        n = keys.shape[0]
        check_queue(self.queue.shape[0], n)
        windows = torch.full((n,), -1, dtype=torch.long) if windows is None else windows
        groups = torch.full((n, 1), -1, dtype=torch.long) if groups is None else groups
        width = max(groups.shape[1], self.queue_groups.shape[1])
        self.queue_groups = _widen(self.queue_groups, width)
        rows = slice(self.ptr, self.ptr + n)
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_windows[rows] = windows.to(self.queue_windows.device)
        self.queue_groups[rows] = _widen(groups, width).to(self.queue_groups.device)
        self.ptr = (self.ptr + n) % self.queue.shape[0]

    def state_dict(self) -> dict:
        if self.args.mode != "moco":
            return {}
        return {"queue": self.queue.cpu(), "queue_windows": self.queue_windows.cpu(),
                "queue_groups": self.queue_groups.cpu(), "ptr": self.ptr, "key_encoder": self.key_encoder.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the queue; a checkpoint without key ids (written before they were stored) loads them as -1."""
        if self.args.mode != "moco" or not state:
            return
        device = self.queue.device
        self.queue = state["queue"].to(device)
        K = self.queue.shape[0]
        self.queue_windows = state.get("queue_windows", torch.full((K,), -1, dtype=torch.long)).to(device)
        self.queue_groups = state.get("queue_groups", torch.full((K, 1), -1, dtype=torch.long)).to(device)
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
