"""Reranking: a cross-encoder scores (query, passage) pairs jointly, the usual second stage of RAG retrieval.

A :class:`Reranker` loads a sentence-transformers ``CrossEncoder`` folder (a sequence classifier with one label:
``CrossEncoder(path).predict(pairs)``, or a hub id resolved offline by :mod:`dretriever.models`) with plain
transformers, and scores pairs the way :meth:`BiEncoder.encode <dretriever.encoder.BiEncoder.encode>` embeds texts:
tokenized once (truncated ``longest_first`` to the folder's maximum length, as the CrossEncoder does), sorted by
length, cut into batches of at most ``batch_size`` pairs and ``max_tokens`` padded tokens
(:mod:`dretriever.token_batches`), under bf16 autocast where the CPU runs it natively (``precision="auto"``).
Scores are the raw logits: the same numbers as ``CrossEncoder.predict`` with an identity activation, not squashed
by a sigmoid, so a teacher's margins and a fused score keep their scale.

``backend="onnx"`` or ``"openvino"`` runs the classifier's logits exported once to ONNX (cached beside the weights
in ``onnx/`` by weight fingerprint, exactly as the bi-encoder's towers are: :mod:`dretriever.runtime`) with ONNX
Runtime in fp32 or with OpenVINO (fp32, or bf16 at ``precision="auto"`` where the CPU has it), held to the fp32
backends' bar: the same scores as torch fp32 within 1e-4.

A passage is scored as ``title + " " + text`` (:func:`passage_text`), the BEIR "contents" that BM25 indexes and
dense models encode. Everything is checked at :meth:`Reranker.load`, so a bad model is an error when the server
or evaluation starts, never at its first request.
"""

from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..encoder import DEFAULT_MAX_TOKENS as ENCODER_MAX_TOKENS, _read_json, autocast
from ..errors import DretrieverError
from ..models import resolve_model
from ..runtime import OnnxSession, cache_dir, check_backend, exported, weights_fingerprint
from ..stages import stage
from ..token_batches import TokenRows, parse_max_tokens, plan_batches
from .types import Run

# padded tokens per scoring batch on a CPU, as for the encoder: MiniLM-L6 pairs of SciFact (256 tokens, bf16, one
# core) ran 33.5 pairs/s at 1024 and 32.1 at 4096 (within this shared machine's noise), 19.6 at a fixed 32 pairs
DEFAULT_MAX_TOKENS = ENCODER_MAX_TOKENS
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def passage_text(title: str, text: str) -> str:
    """What a passage is scored as: its title and text joined by a space (BEIR's "contents")."""
    return f"{title} {text}".strip() if title else text.strip()


def _max_length(path: Path | None, tokenizer, config) -> int:
    """The folder's maximum pair length: sentence_bert_config's ``max_seq_length`` (older layouts), else the
    tokenizer's ``model_max_length``, capped at the model's position embeddings (as the CrossEncoder caps it)."""
    positions = getattr(config, "max_position_embeddings", None) or 512
    saved = _read_json(path / "sentence_bert_config.json", {}).get("max_seq_length") if path else None
    length = saved or tokenizer.model_max_length
    if not length or length >= 1_000_000:  # transformers' sentinel for "no limit"
        length = positions
    return int(min(length, positions))


class Reranker:
    """A cross-encoder scoring pairs in token-budget batches; ``pairs`` and ``seconds`` count its work so far."""

    def __init__(self, model, tokenizer, max_length: int, name: str = "", batch_size: int = 64,
                 max_tokens: int | str | None = "auto", precision: str = "auto", backend: str = "torch",
                 source: Path | None = None):
        if batch_size < 1:
            raise DretrieverError(f"rerank_batch_size: must be positive, got {batch_size}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.name = max_length, name
        self.batch_size, self.max_tokens, self.precision = batch_size, parse_max_tokens(max_tokens), precision
        autocast(self.device, precision)  # an unknown precision fails here, at load
        accepted = inspect.signature(model.forward).parameters
        self._inputs = [k for k in INPUTS if k in accepted]
        self._count = threading.Lock()
        self.pairs, self.seconds = 0, 0.0
        self.backend, self.source = check_backend(backend), source
        if backend == "onnx-int8":
            raise DretrieverError("rerank_backend: torch | onnx | openvino (no int8 cross-encoder graph)")
        self.runtime = None
        if backend != "torch":  # exported (or read from the cache) and compiled now: a failure is a load error
            if precision not in ("auto", "fp32"):
                raise DretrieverError(f"precision: the {backend} backend runs auto or fp32, got {precision!r}")
            self.runtime = self._runtime()

    @classmethod
    def load(cls, name_or_path: str | Path, max_length: int | None = None, **kw) -> "Reranker":
        """Open a CrossEncoder folder or hub id (``kw``: batch_size, max_tokens, precision, backend: torch | onnx |
        openvino). A path that does not hold a one-label sequence classifier is a :class:`DretrieverError` naming
        it."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        name = str(name_or_path)
        resolved = resolve_model(name)
        try:
            config = AutoConfig.from_pretrained(resolved)
        except (OSError, ValueError) as e:
            raise DretrieverError(f"rerank: cannot load a cross-encoder from {name!r} (no such folder, and no model "
                                  f"of that name available offline): {str(e).splitlines()[0]}") from None
        heads = [a for a in (config.architectures or []) if a.endswith("ForSequenceClassification")]
        if not heads:
            raise DretrieverError(f"rerank: {name!r} is not a cross-encoder: its config.json names "
                                  f"{config.architectures or 'no architecture'}, not a ...ForSequenceClassification "
                                  "(a sentence-transformers CrossEncoder folder)")
        if config.num_labels != 1:
            raise DretrieverError(f"rerank: {name!r} has {config.num_labels} labels; a reranker gives one score per "
                                  "pair (num_labels=1)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved)
            model = AutoModelForSequenceClassification.from_pretrained(resolved)
        except (OSError, ValueError) as e:
            raise DretrieverError(f"rerank: cannot load the cross-encoder at {name!r}: {str(e).splitlines()[0]}") \
                from None
        path = Path(resolved) if Path(resolved).is_dir() else None
        if max_length is not None and max_length < 1:
            raise DretrieverError(f"rerank_max_length: must be positive, got {max_length}")
        return cls(model, tokenizer, max_length or _max_length(path, tokenizer, config), name, source=path, **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        return weights_fingerprint({"": self.model})

    def _runtime(self):
        """The classifier's logits exported to ONNX once (cached beside the weights in ``onnx/``, keyed by their
        fingerprint, as the encoder's towers are) and run by ONNX Runtime (fp32) or OpenVINO (``precision``)."""
        path = exported(self.model, cache_dir(self.source), f"cross-encoder-{self.fingerprint()[:16]}", "logits")
        if self.backend == "openvino":
            from ..openvino_runtime import OpenVinoSession

            return OpenVinoSession(path, self.precision)
        return OnnxSession(path)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def auto_max_tokens(self) -> int | None:
        """What ``max_tokens="auto"`` means: :data:`DEFAULT_MAX_TOKENS` on a CPU, no token cap on a GPU."""
        return DEFAULT_MAX_TOKENS if self.device.type == "cpu" else None

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        """Raw logits of ``(query, text)`` for each of ``texts``, in their order."""
        return self.score_pairs([query] * len(texts), list(texts))

    def score_pairs(self, queries: list[str], texts: list[str]) -> np.ndarray:
        """Raw logits (float32) of the pairs ``(queries[i], texts[i])``, in input order."""
        if len(queries) != len(texts):
            raise DretrieverError(f"texts: {len(texts)} texts for {len(queries)} queries")
        out = np.empty(len(texts), dtype=np.float32)
        if not texts:
            return out
        started = time.perf_counter()
        with stage("rerank"):
            rows = self._token_rows(queries, texts)
            max_tokens = self.auto_max_tokens() if self.max_tokens == "auto" else self.max_tokens
            device = self.device
            torch_precision = self.precision if self.runtime is None else "fp32"  # a runtime keeps its own
            with torch.inference_mode(), autocast(device, torch_precision):
                for idx in plan_batches(rows.lengths, self.batch_size, max_tokens):
                    batch = rows.batch(idx)
                    if self.runtime is None:
                        logits = self.model(**{k: batch[k].to(device) for k in self._inputs if k in batch}).logits
                    else:
                        logits = self.runtime({k: batch[k] for k in self._inputs if k in batch})
                    out[idx] = logits[:, 0].float().cpu().numpy()
        with self._count:
            self.pairs += len(texts)
            self.seconds += time.perf_counter() - started
        return out

    def score_lists(self, queries: list[str], texts: list[list[str]]) -> list[np.ndarray]:
        """Raw logits of each query's texts (``texts[i]`` for ``queries[i]``), all pairs scored in one pass, so the
        token-budget batches of several queries' candidates fill up together."""
        flat = self.score_pairs([q for q, row in zip(queries, texts) for _ in row], [t for row in texts for t in row])
        return np.split(flat, np.cumsum([len(row) for row in texts])[:-1]) if texts else []

    def rerank_run(self, run: Run, queries: dict[str, str], text: Callable[[str], str], depth: int,
                   chunk: int = 8192, memo: dict[tuple[str, str], float] | None = None) -> Run:
        """Each query's top ``depth`` of ``run`` reordered by the cross-encoder (``text(docid)``: what a document is
        scored as); the reranked run holds those ``depth`` only. Queries are scored a few at a time (about ``chunk``
        new pairs per pass), so the token rows of a large evaluation never sit in memory at once. ``memo``
        ((qid, docid) -> score, filled here) skips the pairs an earlier run of the same queries already scored:
        the first stages of one evaluation share most of their top hits."""
        memo = {} if memo is None else memo
        out: Run = {}
        qids = [q for q in run if run[q]]
        start = 0
        while start < len(qids):
            group, pairs = [], 0
            while start < len(qids) and (not group or pairs + min(depth, len(run[qids[start]])) <= chunk):
                group.append(qids[start])
                pairs += sum((qids[start], d) not in memo for d, _ in run[qids[start]][:depth])
                start += 1
            todo = [[d for d, _ in run[q][:depth] if (q, d) not in memo] for q in group]
            found = self.score_lists([queries[q] for q in group], [[text(d) for d in row] for row in todo])
            for q, row, s in zip(group, todo, found):
                memo.update(((q, d), float(x)) for d, x in zip(row, s))
            for q in group:
                row = [d for d, _ in run[q][:depth]]
                scores = np.array([memo[q, d] for d in row], dtype=np.float32)
                out[q] = [(row[i], float(scores[i])) for i in reranked_order(scores)]
        return out

    def _token_rows(self, queries: list[str], texts: list[str]) -> TokenRows:
        tok = self.tokenizer
        tokens = tok(queries, texts, truncation="longest_first", max_length=self.max_length, padding=False)
        pads = {"input_ids": tok.pad_token_id, "token_type_ids": tok.pad_token_type_id}
        return TokenRows({k: v for k, v in tokens.items() if k in INPUTS}, pads, tok.padding_side)


def reranked_order(scores: np.ndarray) -> np.ndarray:
    """Positions of the candidates by descending reranker score; a tie keeps the first stage's order."""
    return np.argsort(-scores, kind="stable")
