"""The one training loop (accelerate): every method supplies batches and a loss, the loop does the rest.

``train(args, method)`` runs a :class:`TrainingLoop`. Per optimizer step: ``grad_accum`` micro-batches
(:meth:`TrainingLoop.micro_step`), each ``method.loss(view, batch)`` with autocast off, on an encoder view whose
forwards run under autocast (``precision``) and return fp32 embeddings, so that score products and losses are
computed in fp32 (:mod:`dretriever.train.encoder_view`), then back-propagated (directly, or through the
gradient cache when ``grad_cache_chunk`` > 0); gradients averaged over processes (their in-batch negatives
were already shared by a differentiable all-gather inside the loss); clipping; AdamW; warm-up + decay
schedule; ``method.after_step`` (:meth:`TrainingLoop.step`).

Checkpoints (``output_dir/checkpoints/step-NNNNNNN``) hold the model, optimizer, scheduler, every
process's RNG states and method state, and the position in the epoch; a rerun resumes from the last one
and takes exactly the steps the uninterrupted run would have taken. ``output_dir/log.jsonl`` gets loss,
lr, samples/s and the method's values per step and dev metrics per evaluation; ``final/`` and ``best/``
(best dev nDCG@10) are saved in the encoder's format, so they index and evaluate with the foundation's
commands; ``training_curve.png`` plots the log.

A method may train a model of its own instead of a bi-encoder (the cross-encoder): ``method.load_model(args)``
returns it (an ``nn.Module`` with ``save_pretrained``, ``set_dropout`` and ``autocast``), and
``method.dev_evaluator(args)`` its dev evaluation; everything else is the same loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..encoder import BiEncoder, autocast, autocast_dtype
from ..errors import DretrieverError
from ..atomic import write_json_atomic
from . import distributed as dist_utils
from .config import TrainArgs
from .encoder_view import EncoderView
from .gradcache import CachedEncoder

log = logging.getLogger(__name__)
CKPT_DIR = "checkpoints"


# ------------------------------------------------------------------------------------------- helpers
def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def last_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def _param_groups(params, weight_decay: float, named: dict, lr: float, own_lr: dict | None = None):
    """AdamW groups: weight decay except on biases and norms; parameters named in ``own_lr`` (name -> peak lr,
    from ``method.param_lrs``) get their own lr, the rest ``lr`` (the schedule scales every group alike)."""
    own_lr = own_lr or {}
    groups: dict[tuple[bool, float], list] = {}
    for p in params:
        name = named.get(id(p), "")
        decays = not (p.ndim < 2 or "LayerNorm" in name or name.endswith("bias"))
        groups.setdefault((decays, own_lr.get(name, lr)), []).append(p)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][1] != lr, not kv[0][0]))  # the base-lr decay group first
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "lr": group_lr}
            for (decays, group_lr), ps in ordered]


def plot_curve(log_path: str | Path, png_path: str | Path, title: str = "training") -> None:
    """Loss (and lr) per step, dev nDCG@10 per evaluation, from a JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in Path(log_path).read_text().splitlines() if l.strip()]
    train = [r for r in rows if "loss" in r]
    dev = [r for r in rows if "dev_ndcg@10" in r]
    fig, ax = plt.subplots(1, 2 if dev else 1, figsize=(11 if dev else 6, 4), squeeze=False)
    a = ax[0][0]
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        a.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
        w = max(1, len(losses) // 20)
        if w > 1:
            smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
            a.plot(steps[w - 1:], smooth, lw=1.5, label=f"loss (mean of {w})")
        a.set_xlabel("optimizer step")
        a.set_ylabel("loss")
        a.legend(loc="upper right")
        a2 = a.twinx()
        a2.plot(steps, [r["lr"] for r in train], color="gray", lw=0.8, ls="--")
        a2.set_ylabel("lr", color="gray")
    a.set_title(f"{title}: loss")
    if dev:
        b = ax[0][1]
        b.plot([r["step"] for r in dev], [r["dev_ndcg@10"] for r in dev], marker="o")
        b.set_xlabel("optimizer step")
        b.set_ylabel("dev nDCG@10")
        b.set_title("dev nDCG@10 (dev split carved from train)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


class _Logger:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------- the loop
def train(args: TrainArgs, method, command: str = "") -> dict:
    """Train ``method`` as ``args`` say, resuming from the last checkpoint in ``output_dir``; returns the summary
    written to ``train_summary.json``."""
    return TrainingLoop(args, method, command).run()


class TrainingLoop:
    """One run: :meth:`setup`, :meth:`resume`, :meth:`open_outputs`, then epochs (:meth:`run_epoch`) of
    :meth:`micro_step` x ``grad_accum`` + :meth:`step`, each step followed by :meth:`log`, :meth:`evaluate` and
    :meth:`checkpoint` as the recipe says, and :meth:`finish`.

    The autocast boundary is :meth:`micro_step`: ``method.loss`` runs with autocast off, on an
    :class:`~dretriever.train.encoder_view.EncoderView` whose forwards run under the recipe's ``precision``.
    The method's hooks: ``setup`` and ``trainable_parameters`` (:meth:`setup`), ``batches`` (each epoch),
    ``loss`` and ``samples`` (:meth:`micro_step`), ``after_step`` (:meth:`step`), ``state_dict`` /
    ``load_state_dict`` (:meth:`checkpoint` / :meth:`resume`), ``dev_doc_vectors`` (:meth:`open_outputs`).
    """

    def __init__(self, args: TrainArgs, method, command: str = ""):
        self.args, self.method, self.command = args, method, command
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None}

    def run(self) -> dict:
        from tqdm.auto import tqdm

        self.setup()
        resumed = self.resume()
        self.open_outputs()
        if resumed is None and self.args.has_dev and self.args.eval_at_start:  # the starting model's dev score
            self.evaluate()
        bar = self.args.progress and self.main
        self.bar = tqdm(total=self.total, initial=self.state["step"], disable=not bar, desc=f"train {self.args.method}",
                        unit="step", dynamic_ncols=True)
        self.trained, self.window, self.window_logs = 0, [], {}  # since the last log row
        self.t_last = time.time()
        self.optimizer.zero_grad(set_to_none=True)
        done = self.finished()
        while not done:
            done = self.run_epoch()
        self.bar.close()
        return self.finish()

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Process group, output folder, seed, encoder, the method's set-up, optimizer, schedule, precision."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        args = self.args
        self.t_start = time.time()
        self.accelerator = dist_utils.Runtime(Accelerator())
        self.device, self.main = self.accelerator.device, self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        log.info("train: world size %d (this is rank %d)", self.world, self.accelerator.process_index)
        self.out = Path(args.output_dir)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(self.out)
        set_seed(args.seed)

        own_model = getattr(self.method, "load_model", None)  # a method that trains another kind of model
        self.encoder = encoder = own_model(args) if own_model is not None else load_encoder(args)
        if args.dropout is not None:
            encoder.set_dropout(args.dropout)
        self.lengths = isinstance(encoder, BiEncoder)  # query and document lengths to swap (a bi-encoder's)
        if self.lengths:
            self.saved_lengths = (encoder.config.query_max_length, encoder.config.doc_max_length)
            self.train_lengths = (args.train_query_max_length or self.saved_lengths[0],
                                  args.train_doc_max_length or self.saved_lengths[1])
            encoder.config.query_max_length, encoder.config.doc_max_length = self.train_lengths
        encoder.to(self.device)
        encoder.train()
        self.method.setup(encoder, self.accelerator)
        self.count_samples = getattr(self.method, "samples", lambda batch: None)

        named = {id(p): n for n, p in encoder.named_parameters()}
        self.params = [p for p in self.method.trainable_parameters(encoder) if p.requires_grad]
        if not self.params:
            raise DretrieverError(f"method {args.method!r} has no trainable parameters")
        trained = {id(p) for p in self.params}
        for p in encoder.parameters():  # parameters the method does not train get no gradients at all
            if id(p) not in trained:
                p.requires_grad_(False)
        own_lr = self.method.param_lrs(encoder) if hasattr(self.method, "param_lrs") else None
        self.optimizer = torch.optim.AdamW(_param_groups(self.params, args.weight_decay, named, args.lr, own_lr),
                                           lr=args.lr)
        self.schedule()
        dtype = autocast_dtype(self.device, args.precision)
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and self.device.type == "cuda" else None

    def schedule(self) -> None:
        """Epoch length (from the method's first epoch of batches), total steps, warm-up and lr schedule."""
        from transformers import get_scheduler

        args = self.args
        self.first = self.method.batches(0)
        if not hasattr(self.first, "__len__") and args.max_steps <= 0:
            raise DretrieverError(f"method {args.method!r} gives unsized batches: set max_steps")
        n_batches = len(self.first) if hasattr(self.first, "__len__") else None
        if n_batches is not None and n_batches < args.grad_accum:
            raise DretrieverError(f"batch_size: one epoch has {n_batches} batches, fewer than "
                                  f"grad_accum={args.grad_accum}")
        self.steps_per_epoch = n_batches // args.grad_accum if n_batches is not None else None
        self.total = args.max_steps if args.max_steps > 0 else self.steps_per_epoch * args.epochs
        warmup = int(args.warmup * self.total) if args.warmup < 1 else int(args.warmup)
        self.scheduler = get_scheduler(args.scheduler if args.scheduler != "constant" else "constant_with_warmup",
                                       self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total)

    def resume(self) -> Path | None:
        """Load the last checkpoint of ``output_dir`` (unless ``resume`` is off): weights, optimizer, schedule, this
        process's RNG states and method state, and the position in the epoch. Returns its folder, or None."""
        ckpt = last_checkpoint(self.out) if self.args.resume else None
        if ckpt is None:
            return None
        device, r = self.device, self.accelerator.process_index
        self.state.update(json.loads((ckpt / "state.json").read_text()))
        self.encoder.load_state_dict(torch.load(ckpt / "model.pt", map_location=device, weights_only=False))
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=False))
        self.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
        rank_file = ckpt / f"rng-{r}.pt" if (ckpt / f"rng-{r}.pt").is_file() else ckpt / "rng-0.pt"
        _set_rng_state(torch.load(rank_file, weights_only=False))
        method_file = ckpt / f"method-{r}.pt" if (ckpt / f"method-{r}.pt").is_file() else ckpt / "method-0.pt"
        if method_file.is_file():
            self.method.load_state_dict(torch.load(method_file, map_location=device, weights_only=False))
        if self.scaler is not None and (ckpt / "scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(ckpt / "scaler.pt", weights_only=False))
        if self.main:
            log.info("resuming from %s (step %d, epoch %d, batch %d)", ckpt, self.state["step"], self.state["epoch"],
                     self.state["batch_in_epoch"])
        return ckpt

    def open_outputs(self) -> None:
        """The JSONL log, the dev evaluator and ``train_args.json`` (main process)."""
        args = self.args
        self.logger = _Logger(args.log_path, self.main)
        self.evaluator = _dev_evaluator(args, self.method) if self.main and args.has_dev else None
        if self.main:
            write_json_atomic(self.out / "train_args.json", {"command": self.command,
                                                             "method": method_args_dict(self.method),
                                                             "train": vars(args), "world_size": self.world})

    @contextlib.contextmanager
    def model_lengths(self):
        """Dev evaluation and saving see the model's own maximum lengths; training its training lengths (a
        bi-encoder's; a method's own model keeps its lengths)."""
        if not self.lengths:
            yield
            return
        config = self.encoder.config
        config.query_max_length, config.doc_max_length = self.saved_lengths
        try:
            yield
        finally:
            config.query_max_length, config.doc_max_length = self.train_lengths

    # ---------------------------------------------------------------- training
    def finished(self) -> bool:
        step, stop = self.state["step"], self.args.stop_after_steps
        return step >= self.total or bool(stop and step >= stop)

    def run_epoch(self) -> bool:
        """The current epoch's remaining batches, up to its end or the end of training (then True). A leftover
        micro-batch short of ``grad_accum`` at the end of the batches is dropped."""
        args, state = self.args, self.state
        epoch = state["epoch"]
        batches = self.first if epoch == 0 and self.first is not None else self.method.batches(epoch)
        self.first = None
        micro, done = 0, False
        for i, batch in _remaining(batches, state["batch_in_epoch"]):
            self.micro_step(batch)
            micro += 1
            state["batch_in_epoch"] = i + 1
            if micro % args.grad_accum:
                continue
            grad_norm = self.step()
            step = state["step"]
            if step % args.log_steps == 0 or step == self.total:
                self.log(epoch, grad_norm)
            done = self.finished()
            end_of_epoch = (self.steps_per_epoch is not None
                            and state["batch_in_epoch"] >= self.steps_per_epoch * args.grad_accum)
            if end_of_epoch:
                state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            if (args.eval_steps and step % args.eval_steps == 0) or (not args.eval_steps and end_of_epoch) or done:
                self.evaluate()
            if (args.save_steps and step % args.save_steps == 0) or (not args.save_steps and end_of_epoch) or done:
                self.checkpoint()
            if done or end_of_epoch:
                break
        if not done:
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            self.optimizer.zero_grad(set_to_none=True)
        return done

    def micro_step(self, batch) -> None:
        """Loss and backward of one micro-batch. The autocast boundary: ``method.loss`` runs with autocast off, so
        its score products and losses compute in fp32, on a view of the encoder whose forwards run under the
        recipe's precision and return fp32 embeddings (the gradient cache's view when ``grad_cache_chunk`` > 0)."""
        args = self.args
        amp = partial(autocast, self.device, args.precision)
        view = CachedEncoder(self.encoder, args.grad_cache_chunk, amp) if args.grad_cache_chunk else EncoderView(
            self.encoder, amp)
        # the view's autocast nests inside this disabled one, so the weights it casts for one forward are reused
        # by the micro-batch's other forwards (autocast empties its cache when its outermost context ends)
        with torch.autocast(self.device.type, enabled=False):
            loss, values = self.method.loss(view, batch)
        scaled = loss / args.grad_accum
        view.backward(self.scaler.scale(scaled) if self.scaler is not None else scaled)
        n = self.count_samples(batch)
        self.trained += args.batch_size if n is None else n
        self.window.append(float(loss.detach()))
        for k, v in (values or {}).items():
            self.window_logs.setdefault(k, []).append(float(v))

    def step(self) -> float | None:
        """One optimizer step on the accumulated gradients (averaged over processes, unscaled, clipped), the lr
        schedule and ``method.after_step``. Returns the gradient norm before clipping (None: no clipping)."""
        args, optimizer = self.args, self.optimizer
        dist_utils.average_gradients(self.params)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, args.max_grad_norm) if args.max_grad_norm > 0 else None
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.method.after_step(self.encoder)
        self.state["step"] += 1
        self.bar.update(1)
        return None if grad_norm is None else float(grad_norm)

    def log(self, epoch: int, grad_norm: float | None) -> None:
        """One log row: mean loss (over the steps since the last row and over processes), lr, samples and
        samples/s, the gradient norm and the means of the method's values."""
        loss_value, samples = float(np.mean(self.window)), float(self.trained)
        if self.world > 1:
            t = torch.tensor([loss_value, samples], device=self.device, dtype=torch.float64)
            torch.distributed.all_reduce(t)
            loss_value, samples = float(t[0]) / self.world, float(t[1])
        now = time.time()
        row = {"step": self.state["step"], "epoch": epoch, "loss": loss_value, "lr": self.scheduler.get_last_lr()[0],
               "samples": int(samples), "samples_per_s": round(samples / max(now - self.t_last, 1e-9), 3),
               **({"grad_norm": grad_norm} if grad_norm is not None else {}),
               **{k: float(np.mean(v)) for k, v in self.window_logs.items()}}
        self.logger.write(row)
        self.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{row['lr']:.2e}")
        self.t_last, self.trained = now, 0
        self.window, self.window_logs = [], {}

    # ---------------------------------------------------------------- evaluation, checkpoints, the end
    def evaluate(self) -> dict | None:
        """Dev metrics (main process, when there is a dev split), logged; a new best dev nDCG@10 saves ``best/``."""
        metrics, state = None, self.state
        if self.evaluator is not None:
            t = time.time()
            with self.model_lengths():
                metrics = self.evaluator(self.encoder)
            metrics.update(step=state["step"], epoch=state["epoch"], eval_s=round(time.time() - t, 1))
            self.logger.write(metrics)
            log.info("dev at step %d (%.1f s: queries %.1f s, %d documents encoded in %.1f s): %s", state["step"],
                     metrics["eval_s"], metrics.get("eval_queries_s", 0.0), metrics.get("dev_docs_encoded", 0),
                     metrics.get("eval_docs_s", 0.0),
                     {k: v for k, v in metrics.items() if k.startswith("dev") and k != "dev_docs_encoded"})
            if state["best"] is None or metrics["dev_ndcg@10"] > state["best"]:
                state["best"], state["best_step"] = metrics["dev_ndcg@10"], state["step"]
                with self.model_lengths():
                    _save_encoder(self.encoder, self.out / "best")
                write_json_atomic(self.out / "best" / "dev_metrics.json", metrics)
        self.accelerator.wait_for_everyone()
        return metrics

    def checkpoint(self) -> None:
        """``checkpoints/step-NNNNNNN``, written to a temporary folder and renamed: every process's RNG states and
        method state, then (main) model, optimizer, scheduler, scaler and ``state.json``; the oldest beyond
        ``save_total_limit`` are removed."""
        out, step, acc = self.out, self.state["step"], self.accelerator
        final, tmp = out / CKPT_DIR / f"step-{step:07d}", out / CKPT_DIR / f".tmp-step-{step:07d}"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        r = acc.process_index
        torch.save(_rng_state(), tmp / f"rng-{r}.pt")
        torch.save(self.method.state_dict(), tmp / f"method-{r}.pt")
        acc.wait_for_everyone()
        if self.main:
            torch.save(self.encoder.state_dict(), tmp / "model.pt")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.scaler is not None:
                torch.save(self.scaler.state_dict(), tmp / "scaler.pt")
            write_json_atomic(tmp / "state.json", self.state)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            kept = sorted(p for p in (out / CKPT_DIR).glob("step-*") if (p / "state.json").is_file())
            for old in kept[:-self.args.save_total_limit] if self.args.save_total_limit else []:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def finish(self) -> dict:
        """Save ``final/`` (main process), write ``train_summary.json`` and plot ``training_curve.png``."""
        args, out, state = self.args, self.out, self.state
        result = {"steps": state["step"], "best": None, "final": str(out / "final"),
                  "best_dev_ndcg@10": state["best"], "best_step": state["best_step"]}
        if self.main:
            with self.model_lengths():
                _save_encoder(self.encoder, out / "final")
            if state["best"] is not None:
                result["best"] = str(out / "best")
            result["wall_s"] = round(time.time() - self.t_start, 1)
            result["command"] = self.command
            write_json_atomic(out / "train_summary.json", result)
            if args.log_path.is_file():
                try:
                    plot_curve(args.log_path, out / "training_curve.png", title=args.method)
                except Exception as e:  # a plot must never lose a trained model
                    log.warning("could not plot the training curve: %s", e)
        self.accelerator.wait_for_everyone()
        return result


def _remaining(batches, skip: int):
    """``(index, batch)`` of an epoch's batches from ``skip`` on (a resumed epoch), without building the skipped
    batches when they can be indexed."""
    if skip and hasattr(batches, "__getitem__") and hasattr(batches, "__len__"):
        return ((j, batches[j]) for j in range(skip, len(batches)))
    return ((i, b) for i, b in enumerate(batches) if i >= skip)


RANDOM_BERT = "random-bert"


def random_bert(spec: str, query_max_length: int | None, doc_max_length: int | None) -> BiEncoder:
    """``random-bert[:hidden=128,layers=2,heads=2,intermediate=512]``: a randomly initialised BERT with
    MiniLM's tokenizer, mean pooling and normalisation (seeded by the recipe's seed via ``set_seed``)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ..encoder import EncoderConfig
    from ..models import resolve_model

    opts = {"hidden": 128, "layers": 2, "heads": 2, "intermediate": 512}
    if ":" in spec:
        for item in spec.split(":", 1)[1].split(","):
            key, _, value = item.partition("=")
            if key not in opts or not value.isdigit():
                raise DretrieverError(f"model: bad {RANDOM_BERT} option {item!r} (known: {sorted(opts)})")
            opts[key] = int(value)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=opts["hidden"], num_hidden_layers=opts["layers"],
                        num_attention_heads=opts["heads"], intermediate_size=opts["intermediate"],
                        max_position_embeddings=512)
    return BiEncoder(BertModel(config), tokenizer,
                     EncoderConfig(pooling="mean", normalize=True, query_max_length=query_max_length or 256,
                                   doc_max_length=doc_max_length or 256))


def load_encoder(args: TrainArgs) -> BiEncoder:
    if args.model.split(":")[0] == RANDOM_BERT:
        encoder = random_bert(args.model, args.query_max_length, args.doc_max_length)
        if args.untie:
            import copy
            encoder.doc_model = copy.deepcopy(encoder.query_model)
        return encoder
    return BiEncoder.from_pretrained(args.model, untie=args.untie, query_max_length=args.query_max_length,
                                     doc_max_length=args.doc_max_length)


def method_args_dict(method) -> dict:
    a = getattr(method, "args", None)
    return dict(vars(a)) if a is not None and hasattr(a, "__dict__") else {}


def _remove_stale_temporaries(out: Path) -> None:
    """What a run killed in mid-write left in its folder: the temporaries of atomic writes (``.NAME.tmp-PID``,
    named by the dead process) and a checkpoint in the making (``checkpoints/.tmp-step-N``). Nothing else
    writes there while a run starts, so they are removed."""
    for path in sorted(out.rglob(".*"), key=lambda p: len(p.parts)):  # parents first
        if ".tmp" in path.name:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _save_encoder(encoder: BiEncoder, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _dev_evaluator(args: TrainArgs, method=None):
    """The dev evaluator; a method whose training cannot change the document vectors supplies them once
    (``method.dev_doc_vectors(doc_ids)``, returning None to fall back to encoding), so no evaluation
    re-encodes documents; a method with a model of its own supplies its own evaluator
    (``method.dev_evaluator(args)``: the cross-encoder reranks candidates)."""
    from ..data.negatives import read_negatives
    from .data import DevEvaluator, load_train_data

    own = getattr(method, "dev_evaluator", None)
    if own is not None:
        return own(args)
    if not args.data:
        raise DretrieverError("data: dev_queries needs a BEIR dataset folder in data")
    data = load_train_data(args.data, args.train_split, args.dev_queries, need_train=False,  # dev only
                           dev_split=args.dev_split)
    hard = read_negatives(args.dev_negatives)[0] if args.dev_negatives else None
    evaluator = DevEvaluator(data.corpus, data.dev_queries, data.dev_qrels, corpus_size=args.dev_corpus, hard=hard,
                             candidates=args.dev_candidates, batch_size=args.eval_batch_size, precision=args.precision)
    fixed = getattr(method, "dev_doc_vectors", None)
    if fixed is not None:
        t = time.time()
        vectors = fixed(evaluator.doc_ids)
        if vectors is not None:
            evaluator.fix_documents(vectors)
            log.info("dev corpus: %d fixed document vectors taken from the method (%.1f s); documents are never "
                     "re-encoded", len(evaluator.doc_ids), time.time() - t)
    return evaluator
