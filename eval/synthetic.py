"""Seeded generators for the scale benchmarks: vectors that behave like real embeddings, and passage text.

Import from the repository root (``eval/`` is a namespace package)::

    from eval.synthetic import VectorModel, scifact_embeddings, scifact_model, iter_documents, write_jsonl

Vectors
-------
:class:`VectorModel` is a mixture fitted to real unit-norm embeddings (all-MiniLM-L6-v2 on SciFact):

* spherical faiss k-means puts the real vectors into ``cells`` cells; each cell keeps its weight
  (share of the vectors), its mean (the plain mean of its members, norm < 1), a rank-``rank`` PCA basis
  of its residuals with one standard deviation per direction, and one isotropic standard deviation for
  the residual variance the basis leaves out;
* a sample picks a cell by weight, adds ``U_c (s_c * z)`` (z ~ N(0, I_rank)) and ``sigma_c * e``
  (e ~ N(0, I_d)) to the cell mean, and is L2-normalised (inner product = cosine, like MiniLM).

Determinism: vector ``i`` of ``sample(n, seed)`` depends only on ``(seed, i)`` and the model, never on ``n``
or on the ``chunk`` of :meth:`VectorModel.iter_sample` (vectors are made in fixed blocks of
:data:`BLOCK`, each from its own ``SeedSequence(seed, spawn_key=(stream, block))``), so
``sample(n, s) == sample(m, s)[:n]``. :meth:`VectorModel.queries` draws from the same mixture on a
separate stream: ``queries(n, s)`` never repeats ``sample(n, s)``.

Text
----
:func:`iter_documents` yields ``{"_id", "title", "text"}`` passages of 20-80 made-up words drawn from a
Zipfian vocabulary (also in fixed blocks, so document ``i`` depends only on ``(seed, i)``);
:func:`write_jsonl` streams them to a BEIR-style ``corpus.jsonl``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
# git-ignored (``/eval/reports/**/cache/``): real embeddings and fitted models
CACHE = REPO / "eval" / "reports" / "scale" / "cache"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SCIFACT = Path(os.environ.get("BEIR_DATA", REPO.parent / "shared" / "beir")) / "scifact"

BLOCK = 65_536  # vectors per seeded block; part of the definition of a sample, never change it
TEXT_BLOCK = 4_096  # documents per seeded block of the text generator
_DOCS, _QUERIES = 0, 1  # stream tags in the spawn key
WORKERS = min(2, os.cpu_count() or 1)  # threads making blocks; results do not depend on it


def _rng(seed: int, stream: int, block: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(stream, block))))


# ---------------------------------------------------------------------------------------------- vectors
@dataclass
class VectorModel:
    weights: np.ndarray  # (K,) float64, sums to 1
    means: np.ndarray  # (K, d) float32, cell means (not normalised)
    bases: np.ndarray  # (K, d, r) float32, orthonormal columns: residual PCA directions per cell
    scales: np.ndarray  # (K, r) float32, standard deviation along each direction
    noise: np.ndarray  # (K,) float32, isotropic standard deviation of the rest
    info: dict  # how it was fitted (cells, rank, seed, n, d)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def cells(self) -> int:
        return int(self.means.shape[0])

    @property
    def rank(self) -> int:
        return int(self.bases.shape[2])

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, X: np.ndarray, cells: int = 64, rank: int = 16, seed: int = 0, niter: int = 25,
            noise_scale: float = 1.0) -> "VectorModel":
        """Fit the mixture to the rows of ``X`` (real embeddings, ideally unit-norm).

        ``rank`` is capped per cell at (members - 1); a cell with fewer than 2 members keeps only
        isotropic noise. ``noise_scale`` multiplies the isotropic standard deviation (1.0 = as fitted).
        """
        import faiss

        X = np.ascontiguousarray(X, dtype=np.float32)
        n, d = X.shape
        if cells < 1 or cells > n:
            raise ValueError(f"cells must be in [1, {n}], got {cells}")
        if rank < 0 or rank > d:
            raise ValueError(f"rank must be in [0, {d}], got {rank}")
        km = faiss.Kmeans(d, cells, niter=niter, seed=int(seed), spherical=True, verbose=False,
                          max_points_per_centroid=max(256, n // cells + 1))
        km.train(X)
        _, assign = km.index.search(X, 1)
        assign = assign[:, 0]
        weights = np.bincount(assign, minlength=cells).astype(np.float64)
        means = np.zeros((cells, d), np.float32)
        bases = np.zeros((cells, d, rank), np.float32)
        scales = np.zeros((cells, rank), np.float32)
        noise = np.zeros(cells, np.float32)
        for c in range(cells):
            members = X[assign == c].astype(np.float64)
            m = len(members)
            if m == 0:
                continue
            mu = members.mean(0)
            means[c] = mu
            if m < 2:
                continue
            R = members - mu
            total = float((R ** 2).sum()) / (m - 1)  # trace of the sample covariance
            r = min(rank, m - 1)
            if r:
                _, sv, vt = np.linalg.svd(R, full_matrices=False)
                var = sv[:r] ** 2 / (m - 1)
                bases[c, :, :r] = vt[:r].T
                scales[c, :r] = np.sqrt(var)
                total -= float(var.sum())
            noise[c] = noise_scale * np.sqrt(max(total, 0.0) / max(d - r, 1))
        weights /= weights.sum()
        info = {"cells": cells, "rank": rank, "seed": int(seed), "n": n, "d": d, "niter": niter,
                "noise_scale": noise_scale}
        return cls(weights, means, bases, scales, noise, info)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".npz", delete=False) as f:
            np.savez(f, weights=self.weights, means=self.means, bases=self.bases, scales=self.scales,
                     noise=self.noise, info=np.array(json.dumps(self.info)))
        os.chmod(f.name, 0o644)
        os.replace(f.name, path)

    @classmethod
    def load(cls, path: str | Path) -> "VectorModel":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["weights"], z["means"], z["bases"], z["scales"], z["noise"], json.loads(str(z["info"])))

    # ------------------------------------------------------------------ sampling
    def _block(self, seed: int, stream: int, b: int) -> np.ndarray:
        """BLOCK vectors of block ``b``: built cell by cell in contiguous runs, then put in draw order."""
        rng = _rng(seed, stream, b)
        r = self.rank
        assign = rng.choice(self.cells, size=BLOCK, p=self.weights)
        order = np.argsort(assign, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=self.cells))])
        z = rng.standard_normal((BLOCK, r), dtype=np.float32)
        x = rng.standard_normal((BLOCK, self.dim), dtype=np.float32)  # rows in cell order
        for c in range(self.cells):
            lo, hi = bounds[c], bounds[c + 1]
            if lo == hi:
                continue
            xs = x[lo:hi]
            xs *= self.noise[c]
            xs += self.means[c]
            if r:
                zs = z[lo:hi]
                zs *= self.scales[c]
                xs += zs @ self.bases[c].T
        x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        out = np.empty_like(x)
        out[order] = x
        return out

    def _blocks(self, seed: int, stream: int, count: int) -> Iterator[np.ndarray]:
        """Blocks 0..count-1 in order, made by up to ``WORKERS`` threads (numpy's RNG and BLAS drop the GIL)."""
        if count <= 1 or WORKERS <= 1:
            yield from (self._block(seed, stream, b) for b in range(count))
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(WORKERS) as pool:
            pending = [pool.submit(self._block, seed, stream, b) for b in range(min(WORKERS, count))]
            for b in range(count):
                out = pending.pop(0).result()
                if b + WORKERS < count:
                    pending.append(pool.submit(self._block, seed, stream, b + WORKERS))
                yield out

    def _iter(self, n: int, seed: int, stream: int, chunk: int) -> Iterator[np.ndarray]:
        if n < 0 or chunk < 1:
            raise ValueError(f"need n >= 0 and chunk >= 1, got n={n}, chunk={chunk}")
        blocks = self._blocks(seed, stream, -(-n // BLOCK))
        buf: list[np.ndarray] = []
        have = 0
        done = 0
        while done < n:
            while have < min(chunk, n - done):
                blk = next(blocks)
                buf.append(blk)
                have += len(blk)
            want = min(chunk, n - done)
            joined = buf[0] if len(buf) == 1 else np.concatenate(buf)
            yield np.ascontiguousarray(joined[:want])
            rest = joined[want:]
            buf, have = ([rest] if len(rest) else []), len(rest)
            done += want

    def iter_sample(self, n: int, seed: int = 0, chunk: int = 100_000) -> Iterator[np.ndarray]:
        """Yield ``n`` document vectors as float32 chunks of ``chunk`` rows (the last may be shorter).

        The concatenation is the same for every ``chunk``: it equals ``sample(n, seed)``.
        """
        return self._iter(n, seed, _DOCS, chunk)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` unit-norm float32 vectors, shape ``(n, d)``; row ``i`` depends only on ``(seed, i)``."""
        out = np.empty((n, self.dim), np.float32)
        pos = 0
        for x in self._iter(n, seed, _DOCS, BLOCK):
            out[pos:pos + len(x)] = x
            pos += len(x)
        return out

    def iter_queries(self, n: int, seed: int = 0, chunk: int = 100_000) -> Iterator[np.ndarray]:
        return self._iter(n, seed, _QUERIES, chunk)

    def queries(self, n: int, seed: int = 0) -> np.ndarray:
        """Query vectors from the same mixture, on a stream separate from :meth:`sample`'s."""
        return np.concatenate(list(self._iter(n, seed, _QUERIES, BLOCK))) if n else np.empty((0, self.dim), np.float32)

    def write_npy(self, path: str | Path, n: int, seed: int = 0, chunk: int = 100_000, queries: bool = False) -> Path:
        """Stream ``n`` vectors into a ``.npy`` file (memory-mappable with ``np.load(path, mmap_mode="r")``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, self.dim))
        pos = 0
        for x in self._iter(n, seed, _QUERIES if queries else _DOCS, chunk):
            arr[pos:pos + len(x)] = x
            pos += len(x)
        arr.flush()
        del arr
        os.replace(tmp, path)
        return path


# ---------------------------------------------------------------------------------------------- real data
def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def scifact_embeddings(data: str | Path = SCIFACT, model: str = MODEL, cache: str | Path = CACHE,
                       precision: str = "fp32", batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """Doc ids and all-MiniLM-L6-v2 embeddings (title + text, as the index builder encodes them) of SciFact.

    Encodes once (about 5-7 minutes on 2 CPU cores) and caches to ``cache`` (git-ignored), keyed by the
    model name and the sha256 of ``corpus.jsonl``.
    """
    corpus_path = Path(data) / "corpus.jsonl"
    digest = _file_sha256(corpus_path)
    key = hashlib.sha256(f"{model}|{digest}|{precision}".encode()).hexdigest()[:16]
    out = Path(cache) / f"scifact.{model.replace('/', '__')}.{key}.npz"
    if out.is_file():
        with np.load(out, allow_pickle=False) as z:
            return [str(i) for i in z["ids"]], z["emb"]
    from dretriever.data.beir import load_corpus
    from dretriever.encoder import BiEncoder

    corpus = load_corpus(corpus_path)
    ids = list(corpus)
    log.info("encoding %d SciFact documents with %s (cached to %s)", len(ids), model, out)
    enc = BiEncoder.from_pretrained(model)
    emb = enc.encode_docs([corpus[i].contents for i in ids], batch_size=batch_size, precision=precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".npz", delete=False) as f:
        np.savez(f, ids=np.array(ids), emb=emb, model=np.array(model), corpus_sha256=np.array(digest))
    os.chmod(f.name, 0o644)
    os.replace(f.name, out)
    return ids, emb


# Chosen by eval/realism.py (see eval/reports/scale/realism.md): 16 cells with rank-64 residuals match the
# recall@10 of HNSW32 and IVF64 on the real vectors; 64+ cells make IVF far too easy (cells too separated).
DEFAULT_CELLS = 16
DEFAULT_RANK = 64


def scifact_model(cells: int = DEFAULT_CELLS, rank: int = DEFAULT_RANK, seed: int = 0, noise_scale: float = 1.0,
                  cache: str | Path = CACHE, **kw) -> VectorModel:
    """The :class:`VectorModel` fitted to :func:`scifact_embeddings` (``kw`` go there), cached beside them."""
    _, X = scifact_embeddings(cache=cache, **kw)
    key = hashlib.sha256(X.tobytes()).hexdigest()[:12]
    path = Path(cache) / f"scifact-model.c{cells}.r{rank}.n{noise_scale:g}.s{seed}.{key}.npz"
    if path.is_file():
        return VectorModel.load(path)
    model = VectorModel.fit(X, cells=cells, rank=rank, seed=seed, noise_scale=noise_scale)
    model.save(path)
    return model


# ---------------------------------------------------------------------------------------------- text
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "cr", "dr", "fl", "gr", "pl", "pr", "st", "tr", "th", "sh", "ch", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "x", "nd", "st", "rk", "ng"]


def vocabulary(size: int = 20_000, seed: int = 0) -> list[str]:
    """``size`` distinct made-up words: the first (most frequent) 100 of one syllable, up to 1,000 of 1-2, then 1-4."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(2,))))
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        m = 2 * (size - len(words)) + 256
        syl = rng.integers(1, 5, size=m)
        rank = len(words) + np.arange(m)  # the rank a candidate would get (duplicates shift it a little)
        syl = np.where(rank < 100, 1, np.where(rank < 1000, np.minimum(syl, 2), syl))
        parts = np.stack([rng.integers(len(_ONSETS), size=(m, 4)), rng.integers(len(_VOWELS), size=(m, 4)),
                          rng.integers(len(_CODAS), size=(m, 4))], axis=-1).tolist()
        for k, row in zip(syl.tolist(), parts):
            w = "".join(_ONSETS[o] + _VOWELS[v] + _CODAS[c] for o, v, c in row[:k])
            if len(w) > 1 and w not in seen:
                seen.add(w)
                words.append(w)
                if len(words) == size:
                    break
    return words


@functools.lru_cache(maxsize=8)
def _text_model(vocab_size: int, zipf: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    words = np.array(vocabulary(vocab_size, seed), dtype=object)
    p = 1.0 / np.arange(1, vocab_size + 1) ** zipf
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    return words, cdf


def iter_documents(n: int, seed: int = 0, min_words: int = 20, max_words: int = 80, vocab_size: int = 20_000,
                   zipf: float = 1.07, id_prefix: str = "syn") -> Iterator[dict]:
    """Yield ``n`` passages ``{"_id", "title", "text"}``: a 2-6 word title and ``min_words..max_words`` words
    of text, words drawn from a Zipfian vocabulary (exponent ``zipf``). Document ``i`` depends only on
    ``(seed, i)`` and the other arguments; ids are ``f"{id_prefix}{i}"``.
    """
    if n < 0 or not 1 <= min_words <= max_words:
        raise ValueError(f"need n >= 0 and 1 <= min_words <= max_words, got {n}, {min_words}, {max_words}")
    vocab, cdf = _text_model(vocab_size, float(zipf), int(seed))
    i = 0
    b = 0
    while i < n:
        rng = _rng(seed, 3, b)
        lengths = rng.integers(min_words, max_words + 1, size=TEXT_BLOCK)
        tlen = rng.integers(2, 7, size=TEXT_BLOCK)
        # one draw of word ranks for the whole block, split per document
        ranks = np.searchsorted(cdf, rng.random(int(lengths.sum() + tlen.sum())), side="right")
        words = vocab[ranks].tolist()
        pos = 0
        for j in range(TEXT_BLOCK):
            if i >= n:
                return
            title = words[pos:pos + tlen[j]]
            pos += tlen[j]
            body = words[pos:pos + lengths[j]]
            pos += lengths[j]
            yield {"_id": f"{id_prefix}{i}", "title": " ".join(title).capitalize(), "text": _sentences(body)}
            i += 1
        b += 1


def _sentences(words: list[str]) -> str:
    """Join words into sentences of 8-15 words (lengths fixed by the word count: deterministic)."""
    parts, pos, k = [], 0, 0
    n = len(words)
    while pos < n:
        size = 8 + (k * 5 + n) % 8
        sent = " ".join(words[pos:pos + size])
        parts.append(sent[:1].upper() + sent[1:] + ".")
        pos += size
        k += 1
    return " ".join(parts)


def write_jsonl(path: str | Path, n: int, seed: int = 0, **kw) -> Path:
    """Stream :func:`iter_documents` ``(n, seed, **kw)`` to ``path`` (one JSON object a line), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in iter_documents(n, seed, **kw):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
