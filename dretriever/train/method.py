"""The contract between the one training loop (``loop.py``) and each method (contriever, star, adore, tas_balanced).

A method supplies its batches and its loss; the loop owns everything else (accelerate, optimisation,
accumulation, autocast, checkpoints, resume, logging, evaluation, saving).

Optional: a method whose training cannot change the document vectors (ADORE) defines
``dev_doc_vectors(doc_ids) -> np.ndarray | None``; the loop's dev evaluation then scores against those
vectors and never encodes a dev document (None: encode as usual).

Optional: a method that trains another kind of model than a bi-encoder (the cross-encoder) defines
``load_model(train_args)`` (the model the loop trains, checkpoints and saves with its ``save_pretrained``) and
``dev_evaluator(train_args)`` (called after ``setup``: a callable ``model -> {"dev_ndcg@10": ..., ...}``).

Optional: ``param_lrs(model) -> {parameter name: peak lr}`` gives some parameters their own learning rate
(the cross-encoder's new head); the others train at the recipe's ``lr``, all under the same schedule.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import torch

from ..encoder import BiEncoder


class Method(Protocol):
    name: str

    def setup(self, encoder: BiEncoder, accelerator) -> None:
        """Load data and build state (queues, samplers, indexes). Called once, before resume."""

    def batches(self, epoch: int) -> Iterable[Any]:
        """This process's batches for ``epoch`` (deterministic given the seed and epoch)."""

    def loss(self, encoder: BiEncoder, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss for one batch and any values worth logging. Runs with autocast off (scores in fp32);
        ``encoder`` is the loop's view (:mod:`dretriever.train.encoder_view`): its ``embed`` runs under the
        recipe's precision and returns fp32, and other forwards go under ``with encoder.autocast():``."""

    def trainable_parameters(self, encoder: BiEncoder) -> Iterable[torch.nn.Parameter]:
        """Parameters the optimizer updates (ADORE: the query tower only)."""

    def after_step(self, encoder: BiEncoder) -> None:
        """Called after each optimizer step (MoCo: momentum update, queue push)."""

    def state_dict(self) -> dict:
        """Method state saved in checkpoints (MoCo queue, RNG of samplers)."""

    def load_state_dict(self, state: dict) -> None:
        ...


class MethodBase:
    """Defaults for the optional parts of :class:`Method`: train every parameter, keep no state."""

    def trainable_parameters(self, encoder: BiEncoder) -> Iterable[torch.nn.Parameter]:
        return list(encoder.parameters())

    def samples(self, batch: Any) -> int | None:
        """Training examples in this process's ``batch`` (what ``samples_per_s`` counts); ``None``: the nominal
        ``batch_size``. Methods whose batches may vary in size say so (TAS-Balanced counts its queries)."""
        return None

    def after_step(self, encoder: BiEncoder) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
