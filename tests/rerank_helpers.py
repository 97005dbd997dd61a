"""Tiny cross-encoders for the reranking tests: random BERT sequence classifiers (one label) saved by
sentence-transformers' own ``CrossEncoder.save_pretrained``, so each is a real CrossEncoder folder."""

from __future__ import annotations

import random
from pathlib import Path

KEYWORD = "mitochondria"  # what the trained tiny reranker learns to score high


def _tiny_classifier(seed: int):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from dretriever.models import resolve_model

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1)
    return BertForSequenceClassification(config), tokenizer


def save_cross_encoder(model, tokenizer, path: Path, max_length: int = 128) -> Path:
    """``model`` saved as a CrossEncoder folder (identity activation: predict gives raw logits)."""
    import torch
    from sentence_transformers import CrossEncoder

    raw = path.with_name(path.name + ".hf")
    model.save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    CrossEncoder(str(raw), activation_fn=torch.nn.Identity(), max_length=max_length).save_pretrained(str(path))
    return path


def make_tiny_cross_encoder(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny cross-encoder."""
    return save_cross_encoder(*_tiny_classifier(seed), path)


def make_keyword_reranker(path: Path, words: list[str], steps: int = 150, seed: int = 0) -> Path:
    """A tiny cross-encoder trained (a few seconds on one core) to score a passage high when it holds
    :data:`KEYWORD`, whatever the query: a reranker whose right order a test knows in advance."""
    import torch

    model, tokenizer = _tiny_classifier(seed)
    rng = random.Random(seed)
    others = [w for w in words if w != KEYWORD]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        texts, labels = [], []
        for i in range(32):  # the keyword replaces a word: both classes have the same lengths and titles
            sample = rng.sample(others, rng.randint(4, 16))
            if i % 2:
                sample[rng.randrange(len(sample))] = KEYWORD
            texts.append(f"doc {rng.randrange(100)} " + " ".join(sample))
            labels.append(float(i % 2))
        queries = [" ".join(rng.sample(others, 3)) for _ in texts]
        batch = tokenizer(queries, texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch).logits[:, 0], torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return save_cross_encoder(model, tokenizer, path)
