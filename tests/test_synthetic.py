"""eval/synthetic.py: seeded vector mixture (fit, save/load, determinism, chunking) and passage text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.synthetic import BLOCK, VectorModel, iter_documents, write_jsonl


def clustered(n=600, d=32, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    x = centres[rng.integers(k, size=n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return VectorModel.fit(clustered(), cells=6, rank=4, seed=0)


def test_fit_shapes_and_weights(model):
    assert (model.cells, model.dim, model.rank) == (6, 32, 4)
    assert model.weights.shape == (6,) and abs(model.weights.sum() - 1) < 1e-9
    assert model.bases.shape == (6, 32, 4) and model.scales.shape == (6, 4) and model.noise.shape == (6,)
    for c in range(6):  # orthonormal residual directions, scales in decreasing order
        gram = model.bases[c].T @ model.bases[c]
        assert np.allclose(gram, np.eye(4), atol=1e-4)
        assert np.all(np.diff(model.scales[c]) <= 1e-6)


def test_sample_shape_dtype_unit_norm(model):
    x = model.sample(1000, seed=3)
    assert x.shape == (1000, 32) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert model.sample(0).shape == (0, 32)


def test_sample_is_deterministic_and_seeded(model):
    a, b = model.sample(500, seed=7), model.sample(500, seed=7)
    assert np.array_equal(a, b)
    assert not np.allclose(a, model.sample(500, seed=8))
    assert not np.allclose(a, model.queries(500, seed=7))  # queries: a separate stream
    assert np.array_equal(model.queries(300, seed=7), model.queries(300, seed=7))


def test_chunking_and_length_do_not_change_vectors(model):
    n = BLOCK + 1234  # crosses a block boundary
    full = model.sample(n, seed=1)
    for chunk in (1000, 65_535, 100_000, 3 * BLOCK):
        parts = list(model.iter_sample(n, seed=1, chunk=chunk))
        assert [len(p) for p in parts[:-1]] == [chunk] * (len(parts) - 1) and 0 < len(parts[-1]) <= chunk
        assert np.array_equal(np.concatenate(parts), full)
    assert np.array_equal(model.sample(100, seed=1), full[:100])  # a prefix of a longer sample


def test_samples_follow_the_fitted_cells(model):
    real = clustered()
    x = model.sample(2000, seed=0)
    # every synthetic vector lies near one of the real clusters: its best cosine to a cell mean is like the real one
    means = model.means / np.linalg.norm(model.means, axis=1, keepdims=True)
    best_syn, best_real = (x @ means.T).max(1).mean(), (real @ means.T).max(1).mean()
    assert abs(best_syn - best_real) < 0.05
    share = np.bincount((x @ means.T).argmax(1), minlength=6) / len(x)
    assert np.allclose(share, model.weights, atol=0.05)


def test_save_load_roundtrip(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = VectorModel.load(path)
    assert loaded.info == model.info
    assert np.array_equal(loaded.sample(200, seed=5), model.sample(200, seed=5))


def test_write_npy_streams_the_sample(model, tmp_path):
    path = model.write_npy(tmp_path / "v.npy", 3000, seed=2, chunk=700)
    assert np.array_equal(np.load(path, mmap_mode="r"), model.sample(3000, seed=2))


def test_fit_rejects_bad_arguments():
    x = clustered(n=50)
    with pytest.raises(ValueError):
        VectorModel.fit(x, cells=51)
    with pytest.raises(ValueError):
        VectorModel.fit(x, cells=4, rank=33)
    tiny = VectorModel.fit(x, cells=40, rank=8)  # cells with fewer members than the rank still sample
    assert np.isfinite(tiny.sample(100)).all()


def test_documents_are_deterministic_and_well_formed():
    docs = list(iter_documents(5000, seed=4))  # crosses a text block
    assert docs == list(iter_documents(5000, seed=4))
    assert docs[:10] == list(iter_documents(10, seed=4))
    assert docs != list(iter_documents(5000, seed=5))
    assert [d["_id"] for d in docs] == [f"syn{i}" for i in range(5000)]
    for d in docs[:500]:
        assert set(d) == {"_id", "title", "text"}
        assert 2 <= len(d["title"].split()) <= 6
        assert 20 <= len(d["text"].split()) <= 80
    words = [w.strip(".").lower() for d in docs for w in d["text"].split()]
    counts = np.sort(np.unique(words, return_counts=True)[1])[::-1]
    assert counts[0] > 20 * counts[100]  # Zipfian: a few words are far more frequent


def test_write_jsonl_is_valid_and_reproducible(tmp_path):
    a = write_jsonl(tmp_path / "a" / "corpus.jsonl", 300, seed=9)
    b = write_jsonl(tmp_path / "b.jsonl", 300, seed=9)
    assert a.read_bytes() == b.read_bytes()
    lines = a.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 300
    assert [json.loads(line) for line in lines] == list(iter_documents(300, seed=9))
