"""``CrossEncoderModel``: a sequence-pair classifier that scores a (query, document) pair jointly, as dretriever
trains it (``method: cross-encoder``) and saves it: a sentence-transformers ``CrossEncoder`` folder.

The model is ``AutoModelForSequenceClassification`` with one label (``[CLS] query [SEP] document [SEP]`` ->
one logit), started from any Hugging Face encoder (a new, randomly initialised head) or from a saved
cross-encoder (its head kept). The score is the raw logit: no sigmoid, so margins keep their scale for
distillation (Margin-MSE regresses on logit margins).

A pair is tokenized as sentence-transformers' ``CrossEncoder.predict`` tokenizes it: query and document
truncated together, longest first, to ``max_length`` tokens. Training, the dev evaluation and ``predict``
therefore see the same tokens, and ``CrossEncoder(path).predict(pairs)`` gives our scores.

The saved folder (:meth:`CrossEncoderModel.save_pretrained`) is the Hugging Face model and tokenizer plus
what sentence-transformers reads to score with identity activation and our ``max_length``:

* ``config.json``: ``num_labels`` 1 and ``"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.
  Identity"}`` (the key sentence-transformers 4 and 5 read, and 6 falls back on);
* ``config_sentence_transformers.json``: ``model_type`` CrossEncoder and the same ``activation_fn`` (the file
  sentence-transformers 6 writes and reads);
* the tokenizer's ``model_max_length`` = ``max_length`` (the truncation ``CrossEncoder`` applies);
* with sentence-transformers 6 installed, its ``modules.json`` and ``sentence_bert_config.json`` (one
  sequence-classification module, logits as scores), so it loads the folder as a saved CrossEncoder rather than
  "initializing a new" one from ``config.json`` (the same weights either way; versions 4 and 5 read no
  modules for a CrossEncoder);
* ``dretriever_cross_encoder.json``: our own settings (``max_length``), read back by :meth:`from_pretrained`.

Plain ``transformers`` (``AutoModelForSequenceClassification``) loads the folder too.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import DretrieverError
from .models import resolve_model

CONFIG_NAME = "dretriever_cross_encoder.json"
IDENTITY = "torch.nn.modules.linear.Identity"  # sentence-transformers' name for torch.nn.Identity (raw logits)
DEFAULT_MAX_LENGTH = 256


@dataclass
class PairConfig:
    max_length: int = DEFAULT_MAX_LENGTH  # tokens of the whole pair, special tokens included

    def __post_init__(self):
        if self.max_length <= 0:
            raise DretrieverError(f"max_length: must be positive, got {self.max_length}")


class CrossEncoderModel(nn.Module):
    """One logit per (query, document) pair. ``forward(features)`` -> (N,) logits of a tokenized batch;
    :meth:`tokenize` builds that batch; :meth:`predict` scores many pairs (length-sorted batches, no gradients)."""

    def __init__(self, model: nn.Module, tokenizer, config: PairConfig):
        super().__init__()
        if getattr(model.config, "num_labels", None) != 1:
            raise DretrieverError(f"cross-encoder: expected a classifier with num_labels 1, got "
                                  f"{getattr(model.config, 'num_labels', None)}")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.new_parameters: list[str] = []  # names of parameters initialised afresh (a new head), by from_pretrained

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, max_length: int | None = None) -> "CrossEncoderModel":
        """A saved cross-encoder (head kept) or any encoder (a new one-logit head, initialised from the torch
        seed). ``max_length`` overrides the saved one (default: the saved one, else 256, within the model's
        position embeddings)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        resolved = resolve_model(name_or_path)
        path = Path(resolved)
        if path.is_dir() and not (path / "config.json").is_file():
            raise DretrieverError(f"model: {path} holds no config.json (not a Hugging Face model folder)")
        try:
            hf_config = AutoConfig.from_pretrained(resolved)
        except OSError as e:
            raise DretrieverError(f"model: cannot load {name_or_path!r}: {e}") from None
        saved = json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).is_file() else {}
        length = max_length or saved.get("max_length") or DEFAULT_MAX_LENGTH
        positions = getattr(hf_config, "max_position_embeddings", None)
        if positions and length > positions:
            raise DretrieverError(f"max_length: {length} exceeds the model's {positions} position embeddings")
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolved, num_labels=1, ignore_mismatched_sizes=True, output_loading_info=True)
        model.config.problem_type = "regression"  # one raw logit
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        out = cls(model, tokenizer, PairConfig(max_length=length))
        out.source = path if path.is_dir() else None
        fresh = set(info.get("missing_keys", ())) | {k for k, *_ in info.get("mismatched_keys", ())}
        out.new_parameters = sorted(f"model.{n}" for n, _ in model.named_parameters() if n in fresh)
        return out

    def save_pretrained(self, out: str | os.PathLike) -> None:
        """Write the sentence-transformers CrossEncoder folder described in the module docstring."""
        import sentence_transformers
        import transformers

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.model.config.sentence_transformers = {"activation_fn": IDENTITY,
                                                   "version": sentence_transformers.__version__}
        self.model.save_pretrained(out)
        previous = self.tokenizer.model_max_length
        self.tokenizer.model_max_length = self.config.max_length
        try:
            self.tokenizer.save_pretrained(out)
        finally:
            self.tokenizer.model_max_length = previous
        st_config = {"__version__": {"sentence_transformers": sentence_transformers.__version__,
                                     "transformers": transformers.__version__, "pytorch": torch.__version__},
                     "model_type": "CrossEncoder", "activation_fn": IDENTITY, "prompts": {},
                     "default_prompt_name": None}
        (out / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
        _write_st_modules(out)
        (out / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    # ---------------------------------------------------------------- training-time forward
    def set_dropout(self, p: float) -> None:
        """Every dropout probability of the model set to ``p`` (see :func:`dretriever.encoder.set_dropout`)."""
        from .encoder import set_dropout

        set_dropout(self, p)

    def autocast(self):
        """No autocast of its own: the training loop's view supplies the recipe's precision."""
        return contextlib.nullcontext()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, queries: list[str], docs: list[str]):
        """The padded batch of ``(queries[i], docs[i])`` pairs, truncated longest first to ``max_length``."""
        if len(queries) != len(docs):
            raise DretrieverError(f"cross-encoder: {len(queries)} queries but {len(docs)} documents")
        return self.tokenizer(list(queries), list(docs), padding=True, truncation="longest_first",
                              max_length=self.config.max_length, return_tensors="pt")

    def forward(self, features) -> torch.Tensor:
        """(N,) logits of a tokenized batch (moved to the model's device)."""
        features = {k: v.to(self.device) for k, v in features.items()}
        return self.model(**features).logits.squeeze(-1)

    def score(self, features) -> torch.Tensor:
        """The same as calling the model: (N,) logits of a tokenized batch (the name a training method uses)."""
        return self(features)

    # ---------------------------------------------------------------- inference
    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32, precision: str = "fp32") -> np.ndarray:
        """(N,) float32 raw logits of ``pairs`` in their order: batches of ``batch_size`` pairs of similar
        length (longest first, least padding), without gradients, under autocast when ``precision`` allows."""
        from .encoder import autocast

        out = np.empty(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        lengths = [len(q) + len(d) for q, d in pairs]
        order = np.argsort([-n for n in lengths], kind="stable")
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), autocast(self.device, precision):
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    batch = self.tokenize([pairs[i][0] for i in rows], [pairs[i][1] for i in rows])
                    out[rows] = self(batch).float().cpu().numpy()
        finally:
            self.train(was_training)
        return out


def _write_st_modules(out: Path) -> None:
    """sentence-transformers 6's module list for a CrossEncoder: its one Transformer module, run as a sequence
    classifier whose logits are the scores. Nothing with an older version (which reads no modules.json)."""
    try:
        from sentence_transformers.base.modules.transformer import Transformer
    except ImportError:
        return
    modules = [{"idx": 0, "name": "0", "path": "", "type": f"{Transformer.__module__}.{Transformer.__qualname__}"}]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    module = {"transformer_task": "sequence-classification",
              "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
              "module_output_name": "scores"}
    (out / "sentence_bert_config.json").write_text(json.dumps(module, indent=2) + "\n")
