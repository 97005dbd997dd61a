"""BiEncoder: the one encoder module every trainer, index builder and searcher shares.

A Hugging Face encoder (or two, for separate query and document towers) plus pooling, optional L2
normalisation, query/document prefixes and maximum lengths. Saved in the sentence-transformers layout,
so ``SentenceTransformer(path)`` and Pyserini's ``AutoQueryEncoder`` load it and embed identically.
"""

from __future__ import annotations

import contextlib
import json
import os
from copy import deepcopy
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from .errors import DretrieverError
from .models import resolve_model
from .quantize import Calibration, int8_path, quantize_int8
from .runtime import check_backend, weights_fingerprint
from .stages import stage
from .token_batches import TokenRows, plan_batches

CONFIG_NAME = "dretriever.json"
DOC_TOWER_DIR = "doc_encoder"
# padded tokens per inference batch on a CPU (rows x longest row); chosen by measurement, eval/reports/encode/
DEFAULT_MAX_TOKENS = 1024
INT8_DOC_MAX_TOKENS = 4096  # onnx-int8 documents: +9 % over 1024 (queries keep 1024), eval/reports/encode (int8)


@dataclass
class EncoderConfig:
    pooling: str = "mean"  # "mean" | "cls"
    normalize: bool = True
    query_prefix: str = ""
    doc_prefix: str = ""
    query_max_length: int = 256
    doc_max_length: int = 256

    def __post_init__(self):
        if self.pooling not in ("mean", "cls"):
            raise DretrieverError(f"pooling: expected 'mean' or 'cls', got {self.pooling!r}")
        if self.query_max_length <= 0 or self.doc_max_length <= 0:
            raise DretrieverError("query_max_length and doc_max_length must be positive")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def pool_array(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """:func:`pool` and the L2 normalisation of :meth:`BiEncoder.embed` in numpy, for the exported backends'
    outputs: torch's ops there wake its thread pool, whose threads then spin beside the runtime's own (on 2 cores,
    7 % of SciFact's 300 queries' encoding with OpenVINO, 2026-12-07)."""
    if pooling == "cls":
        emb = hidden[:, 0]
    else:
        m = mask[..., None].astype(hidden.dtype)
        emb = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto" | "fp32" | "bf16" | "fp16") on ``device``.

    "auto" picks bf16 on CPUs with native bf16 (AVX-512 BF16 / AMX: faster and within 1e-4 cosine of
    fp32) and on CUDA devices that support it (else fp16); fp32 elsewhere, since emulated bf16 on an
    AVX2-only CPU is several times slower than fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise DretrieverError(f"precision: expected auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout probability inside ``model`` to ``p`` (training only; inference never drops).

    ``p = 0`` trains without dropout masks: on a CPU under bf16 autocast a MiniLM step then runs ~2x faster
    (drawing the attention-dropout masks was a quarter of the step) and attention can take SDPA's fused
    path. A saved model's config keeps its own values."""
    if not 0.0 <= p < 1.0:
        raise DretrieverError(f"dropout: must be in [0, 1), got {p}")
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def autocast(device: torch.device, precision: str):
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


# sentence-transformers up to 5 wrote one boolean per pooling mode; 6 writes "pooling_mode": "mean" (or a list)
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                   "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def _st_pooling(config_file: Path) -> str:
    """``cls`` or ``mean`` from a sentence-transformers Pooling config (either format); others are refused."""
    cfg = _read_json(config_file, {})
    mode = cfg.get("pooling_mode", [m for key, m in _LEGACY_POOLING.items() if cfg.get(key)])
    modes = [mode] if isinstance(mode, str) else list(mode)
    if modes not in (["cls"], ["mean"]):
        raise DretrieverError(f"{config_file}: pooling {modes or 'unset'}: only cls or mean pooling is supported")
    return modes[0]


def _config_from_st_layout(path: Path) -> dict:
    """Encoder settings from a sentence-transformers model folder (modules.json and friends)."""
    modules = _read_json(path / "modules.json", [])
    out: dict = {"normalize": any(m["type"].endswith("Normalize") for m in modules)}
    for m in modules:
        if m["type"].endswith("Pooling"):
            out["pooling"] = _st_pooling(path / m["path"] / "config.json")
    # the maximum length: sentence_bert_config.json up to sentence-transformers 5, the tokenizer's from 6 on
    st = _read_json(path / "sentence_bert_config.json", {})
    max_length = st.get("max_seq_length") or _read_json(path / "tokenizer_config.json", {}).get("model_max_length")
    if max_length and max_length < 1_000_000:  # transformers writes a huge sentinel when there is no limit
        out["query_max_length"] = out["doc_max_length"] = int(max_length)
    prompts = _read_json(path / "config_sentence_transformers.json", {}).get("prompts", {})
    out["query_prefix"] = prompts.get("query", "")
    out["doc_prefix"] = prompts.get("document", prompts.get("passage", ""))
    return out


class BiEncoder(nn.Module):
    """Query and document towers (tied by default) with pooling and normalisation."""

    def __init__(self, query_model: nn.Module, tokenizer, config: EncoderConfig, doc_model: nn.Module | None = None,
                 backend: str = "torch", calibration: Calibration | None = None):
        super().__init__()
        self.query_model = query_model
        self.doc_model = doc_model  # None: tied towers
        self.tokenizer = tokenizer
        self.config = config
        self.source: Path | None = None  # the folder the weights came from (where an exported runtime is cached)
        self.backend = check_backend(backend)
        self.calibration = calibration  # onnx-int8: the passages its graph is calibrated on (dretriever.quantize)
        self._runtimes: dict = {}
        self._bf16: dict = {}  # tower name -> (weights' versions, bf16 copy): bf16_tower

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, untie: bool = False, backend: str = "torch",
                        calibration: Calibration | None = None, **overrides) -> "BiEncoder":
        """Load a dretriever, sentence-transformers or plain Hugging Face model.

        ``overrides`` are :class:`EncoderConfig` fields; ``None`` values are ignored.
        ``untie=True`` starts a separate document tower as a copy of the query tower.
        ``backend`` runs inference (:meth:`encode`) in torch or, exported once, in ONNX Runtime: fp32 ("onnx")
        or static int8 ("onnx-int8", calibrated on ``calibration``, a sample of the corpus), or in OpenVINO
        ("openvino": the same export, fp32 or bf16 as ``precision`` asks); training always runs in torch.
        """
        resolved = resolve_model(name_or_path)
        path = Path(resolved)
        settings = {}
        if path.is_dir():
            settings = _read_json(path / CONFIG_NAME) or (
                _config_from_st_layout(path) if (path / "modules.json").is_file() else {}
            )
        settings = {k: v for k, v in settings.items() if k in {f.name for f in fields(EncoderConfig)}}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        config = EncoderConfig(**settings)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        query_model = AutoModel.from_pretrained(resolved)
        doc_model = None
        if path.is_dir() and (path / DOC_TOWER_DIR).is_dir():
            doc_model = AutoModel.from_pretrained(path / DOC_TOWER_DIR)
        elif untie:
            doc_model = AutoModel.from_pretrained(resolved)
        encoder = cls(query_model, tokenizer, config, doc_model, backend=backend, calibration=calibration)
        encoder.source = path if path.is_dir() else None
        return encoder

    def with_backend(self, backend: str) -> "BiEncoder":
        """This encoder (the same weights, settings and calibration, not copied) on another inference backend."""
        if backend == self.backend:
            return self
        other = type(self)(self.query_model, self.tokenizer, self.config, self.doc_model, backend=backend,
                           calibration=self.calibration)
        other.source = self.source
        return other

    def save_pretrained(self, out: str | os.PathLike) -> None:
        """Write the sentence-transformers layout (query tower at the root, doc tower in ``doc_encoder/``)."""
        out = Path(out)
        self._save_tower(self.query_model, out)
        if self.doc_model is not None:
            self._save_tower(self.doc_model, out / DOC_TOWER_DIR)
        (out / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    def _save_tower(self, model: nn.Module, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        c = self.config
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if c.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            (out / "2_Normalize").mkdir(exist_ok=True)
        (out / "modules.json").write_text(json.dumps(modules, indent=2))
        (out / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": self.dim,
            "pooling_mode_cls_token": c.pooling == "cls",
            "pooling_mode_mean_tokens": c.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (out / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": c.doc_max_length, "do_lower_case": False}, indent=2))
        st_config = {
            "prompts": {"query": c.query_prefix, "document": c.doc_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if c.normalize else "dot",
        }
        (out / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return int(self.query_model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.query_model.parameters()).device

    @property
    def tied(self) -> bool:
        return self.doc_model is None

    def tower(self, side: str) -> nn.Module:
        if side == "query":
            return self.query_model
        if side == "doc":
            return self.doc_model if self.doc_model is not None else self.query_model
        raise ValueError(f"side must be 'query' or 'doc', got {side!r}")

    def fingerprint(self) -> str:
        """sha256 over every weight of both towers (names, dtypes, shapes, bytes)."""
        return weights_fingerprint({"q.": self.query_model, "d.": self.doc_model})

    def set_dropout(self, p: float) -> None:
        """Set every dropout probability of both towers to ``p`` (see :func:`set_dropout`)."""
        set_dropout(self, p)

    def autocast(self):
        """The precision of training forwards: none for the encoder itself. The training loop hands methods an
        :class:`~dretriever.train.encoder_view.EncoderView` whose ``autocast()`` is the recipe's precision; a method
        runs another encoder's forward (MoCo's key encoder) under ``encoder.autocast()`` to share it."""
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- training-time forward
    def tokenize(self, texts: list[str], side: str, pad: bool = True):
        c = self.config
        prefix = c.query_prefix if side == "query" else c.doc_prefix
        max_length = c.query_max_length if side == "query" else c.doc_max_length
        texts = [prefix + t for t in texts] if prefix else list(texts)
        return self.tokenizer(texts, truncation=True, max_length=max_length, padding=pad,
                              return_tensors="pt" if pad else None)

    def embed(self, batch, side: str, model: nn.Module | None = None) -> torch.Tensor:
        """Pooled (and normalised) embeddings for a tokenized batch, with gradients if enabled (``model``: another
        copy of ``side``'s tower to run, e.g. :meth:`bf16_tower`)."""
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = (model or self.tower(side))(**batch).last_hidden_state
        return self._pool(hidden, batch["attention_mask"])

    def bf16_tower(self, side: str) -> nn.Module:
        """A copy of ``side``'s tower with bf16 weights, for inference in bf16 on a CPU (made on first use and made
        again whenever the weights change, as their version counters tell: a training loop's evaluations see the
        current weights). Autocast instead casts every weight to bf16 on every call and keeps LayerNorm and
        softmax in fp32; on the 2-core Intel Xeon with AMX (2026-12-07) bf16 weights encoded SciFact documents
        faster, as sentence-transformers' bf16 weights did (eval/reports/encode)."""
        tower = self.tower(side)
        key = (id(tower), tuple(p._version for p in tower.parameters()))
        name = "query" if side == "query" or self.tied else "doc"
        cached = self._bf16.get(name)
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                copy = deepcopy(tower).to(torch.bfloat16).eval()
                for p in copy.parameters():
                    p.grad = None
                    p.requires_grad_(False)
            self._bf16[name] = cached = (key, copy)
        return cached[1]

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        emb = pool(hidden.float(), mask, self.config.pooling)
        return F.normalize(emb, dim=-1) if self.config.normalize else emb

    def runtime(self, side: str, precision: str = "fp32"):
        """The exported tower for ``side`` under a backend other than torch (exported, and for ``onnx-int8``
        quantised, on first use, then cached beside the weights): an ONNX Runtime session, or for ``openvino`` the
        same export compiled by OpenVINO at ``precision`` (auto | fp32; one compiled graph per precision)."""
        tower = "query" if side == "query" or self.tied else "doc"
        key = (tower, precision if self.backend == "openvino" else "fp32")
        if key not in self._runtimes:
            from .runtime import OnnxSession, cache_dir, exported

            path = exported(self.tower(side), cache_dir(self.source), f"{tower}-{self.fingerprint()[:16]}")
            if self.backend == "onnx-int8":
                path = self._int8(path)
            if self.backend == "openvino":
                from .openvino_runtime import OpenVinoSession

                self._runtimes[key] = OpenVinoSession(path, precision)
            else:
                self._runtimes[key] = OnnxSession(path)
        return self._runtimes[key]

    def _int8(self, fp32: Path) -> Path:
        """The int8 graph of the export ``fp32``, calibrated on :attr:`calibration`'s passages (document side)."""
        if self.calibration is None:
            raise DretrieverError("backend: 'onnx-int8' needs calibration passages (an index build draws them from "
                                  "the corpus; searching reads them from the index)")
        path = int8_path(fp32, self.calibration)
        if not path.is_file():
            rows = self.token_rows(list(self.calibration.texts), "doc")
            quantize_int8(fp32, path, (rows.batch(idx) for idx in plan_batches(rows.lengths, 32, 4096)))
        return path

    def forward(self, batch, side: str) -> torch.Tensor:
        return self.embed(batch, side)

    # ---------------------------------------------------------------- inference
    def encode(self, texts: list[str], side: str, batch_size: int = 64, precision: str = "auto",
               progress: bool = False, max_tokens: int | str | None = "auto") -> np.ndarray:
        """Embed ``texts`` (float32, input order) in length-sorted batches under ``inference_mode``.

        Texts are tokenized once and sorted by token count (longest first, so memory peaks at once and
        padding is minimal); each batch holds at most ``batch_size`` texts and at most ``max_tokens``
        padded tokens (``None``: a fixed ``batch_size`` texts; "auto": :meth:`auto_max_tokens`, small batches
        on a CPU, where they keep the activations in cache, and ``None`` on a GPU, which wants large ones;
        see :mod:`dretriever.token_batches`), is padded by one numpy gather, and is embedded at ``precision``:
        bf16 on a CPU runs :meth:`bf16_tower` (bf16 weights), other reduced precisions run under autocast.
        """
        from tqdm.auto import tqdm

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with stage("tokenize"):
            rows = self.token_rows(texts, side)
        device = self.device
        if max_tokens == "auto":
            max_tokens = self.auto_max_tokens(side)
        was_training = self.training
        if was_training:  # eval() walks every module: not on each query batch of a search
            self.eval()
        runtime = None
        if self.backend != "torch":
            if precision not in ("auto", "fp32"):
                raise DretrieverError(f"precision: the {self.backend} backend sets its own (auto or fp32), "
                                      f"got {precision!r}")
            runtime = self.runtime(side, precision)
            precision = "fp32"  # no torch autocast around it: the runtime keeps its own precision
        model = None
        if runtime is None and device.type == "cpu" and autocast_dtype(device, precision) == torch.bfloat16:
            model, precision = self.bf16_tower(side), "fp32"  # bf16 weights, no autocast
        bar = tqdm(total=len(texts), desc=f"encode {side}s", unit=side, disable=not progress, leave=False)
        with torch.inference_mode(), autocast(device, precision):
            for idx in plan_batches(rows.lengths, batch_size, max_tokens):
                with stage("tokenize"):
                    batch = rows.batch(idx)
                with stage("encode"):
                    if runtime is None:
                        out[idx] = self.embed(batch, side, model).float().cpu().numpy()
                    else:
                        out[idx] = pool_array(runtime(batch).numpy(), batch["attention_mask"].numpy(),
                                              self.config.pooling, self.config.normalize)
                bar.update(len(idx))
        bar.close()
        if was_training:
            self.train()
        return out

    def auto_max_tokens(self, side: str) -> int | None:
        """What ``max_tokens="auto"`` means: :data:`DEFAULT_MAX_TOKENS` on a CPU (:data:`INT8_DOC_MAX_TOKENS`
        for ``onnx-int8`` documents, whose int8 products want larger batches), ``None`` on a GPU."""
        if self.device.type != "cpu":
            return None
        return INT8_DOC_MAX_TOKENS if self.backend == "onnx-int8" and side != "query" else DEFAULT_MAX_TOKENS

    def token_rows(self, texts: list[str], side: str) -> TokenRows:
        """``texts`` tokenized (prefix, truncation) without padding, held flat for :meth:`TokenRows.batch`."""
        tokens = self.tokenize(texts, side, pad=False)
        tok = self.tokenizer
        pads = {"input_ids": tok.pad_token_id, "token_type_ids": tok.pad_token_type_id}
        return TokenRows(dict(tokens), pads, tok.padding_side)

    def encode_queries(self, queries: list[str], **kw) -> np.ndarray:
        return self.encode(queries, "query", **kw)

    def encode_docs(self, docs: list[str], **kw) -> np.ndarray:
        return self.encode(docs, "doc", **kw)
