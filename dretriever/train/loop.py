"""The one training loop (accelerate): every method supplies batches and a loss, the loop does the rest.

Per optimizer step: ``grad_accum`` micro-batches, each ``method.loss(encoder, batch)`` under autocast
(``precision``) and back-propagated (directly, or through the gradient cache when ``grad_cache_chunk``
> 0); gradients averaged over processes (their in-batch negatives were already shared by a differentiable
all-gather inside the loss); clipping; AdamW; warm-up + decay schedule; ``method.after_step``.

Checkpoints (``output_dir/checkpoints/step-NNNNNNN``) hold the model, optimizer, scheduler, every
process's RNG states and method state, and the position in the epoch; a rerun resumes from the last one
and takes exactly the steps the uninterrupted run would have taken. ``output_dir/log.jsonl`` gets loss,
lr, samples/s and the method's values per step and dev metrics per evaluation; ``final/`` and ``best/``
(best dev nDCG@10) are saved in the encoder's format, so they index and evaluate with the foundation's
commands; ``training_curve.png`` plots the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..encoder import BiEncoder, autocast, autocast_dtype
from ..errors import DretrieverError
from ..index.atomic import write_json_atomic
from . import distributed as dist_utils
from .config import TrainArgs
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


def _param_groups(params, weight_decay: float, named: dict):
    decay, no_decay = [], []
    for p in params:
        name = named.get(id(p), "")
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    t_start = time.time()
    accelerator = dist_utils.Runtime(Accelerator())
    device, main = accelerator.device, accelerator.is_main_process
    world = accelerator.num_processes
    log.info("train: world size %d (this is rank %d)", world, accelerator.process_index)
    out = Path(args.output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
    set_seed(args.seed)

    encoder = load_encoder(args)
    if args.dropout is not None:
        encoder.set_dropout(args.dropout)
    saved_lengths = (encoder.config.query_max_length, encoder.config.doc_max_length)
    train_lengths = (args.train_query_max_length or saved_lengths[0], args.train_doc_max_length or saved_lengths[1])

    @contextlib.contextmanager
    def model_lengths():  # dev evaluation and saving see the model's own lengths, training its own
        encoder.config.query_max_length, encoder.config.doc_max_length = saved_lengths
        try:
            yield
        finally:
            encoder.config.query_max_length, encoder.config.doc_max_length = train_lengths

    encoder.config.query_max_length, encoder.config.doc_max_length = train_lengths
    encoder.to(device)
    encoder.train()
    method.setup(encoder, accelerator)

    named = {id(p): n for n, p in encoder.named_parameters()}
    params = [p for p in method.trainable_parameters(encoder) if p.requires_grad]
    if not params:
        raise DretrieverError(f"method {args.method!r} has no trainable parameters")
    frozen = {id(p) for p in params}
    for p in encoder.parameters():  # parameters the method does not train get no gradients at all
        if id(p) not in frozen:
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(_param_groups(params, args.weight_decay, named), lr=args.lr)

    first = method.batches(0)
    if not hasattr(first, "__len__") and args.max_steps <= 0:
        raise DretrieverError(f"method {args.method!r} gives unsized batches: set max_steps")
    n_batches = len(first) if hasattr(first, "__len__") else None
    if n_batches is not None and n_batches < args.grad_accum:
        raise DretrieverError(f"batch_size: one epoch has {n_batches} batches, fewer than grad_accum={args.grad_accum}")
    steps_per_epoch = n_batches // args.grad_accum if n_batches is not None else None
    total = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.epochs
    warmup = int(args.warmup * total) if args.warmup < 1 else int(args.warmup)
    scheduler = get_scheduler(args.scheduler if args.scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=warmup, num_training_steps=total)

    dtype = autocast_dtype(device, args.precision)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None

    def amp():
        return autocast(device, args.precision)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None}
    resumed = None
    if args.resume and (ckpt := last_checkpoint(out)) is not None:
        resumed = ckpt
        state.update(json.loads((ckpt / "state.json").read_text()))
        encoder.load_state_dict(torch.load(ckpt / "model.pt", map_location=device, weights_only=False))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=False))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
        r = accelerator.process_index
        rank_file = ckpt / f"rng-{r}.pt" if (ckpt / f"rng-{r}.pt").is_file() else ckpt / "rng-0.pt"
        _set_rng_state(torch.load(rank_file, weights_only=False))
        method_file = ckpt / f"method-{r}.pt" if (ckpt / f"method-{r}.pt").is_file() else ckpt / "method-0.pt"
        if method_file.is_file():
            method.load_state_dict(torch.load(method_file, map_location=device, weights_only=False))
        if scaler is not None and (ckpt / "scaler.pt").is_file():
            scaler.load_state_dict(torch.load(ckpt / "scaler.pt", weights_only=False))
        if main:
            log.info("resuming from %s (step %d, epoch %d, batch %d)", ckpt, state["step"], state["epoch"],
                     state["batch_in_epoch"])

    logger = _Logger(args.log_path, main)
    evaluator = _dev_evaluator(args, method) if main and args.has_dev else None
    if main:
        write_json_atomic(out / "train_args.json", {"command": command, "method": method_args_dict(method),
                                                    "train": vars(args), "world_size": world})

    def evaluate() -> dict | None:
        metrics = None
        if evaluator is not None:
            t = time.time()
            with model_lengths():
                metrics = evaluator(encoder)
            metrics.update(step=state["step"], epoch=state["epoch"], eval_s=round(time.time() - t, 1))
            logger.write(metrics)
            log.info("dev at step %d (%.1f s: queries %.1f s, %d documents encoded in %.1f s): %s", state["step"],
                     metrics["eval_s"], metrics.get("eval_queries_s", 0.0), metrics.get("dev_docs_encoded", 0),
                     metrics.get("eval_docs_s", 0.0),
                     {k: v for k, v in metrics.items() if k.startswith("dev") and k != "dev_docs_encoded"})
            if state["best"] is None or metrics["dev_ndcg@10"] > state["best"]:
                state["best"], state["best_step"] = metrics["dev_ndcg@10"], state["step"]
                with model_lengths():
                    _save_encoder(encoder, out / "best")
                write_json_atomic(out / "best" / "dev_metrics.json", metrics)
        accelerator.wait_for_everyone()
        return metrics

    def save_checkpoint() -> None:
        final = out / CKPT_DIR / f"step-{state['step']:07d}"
        tmp = out / CKPT_DIR / f".tmp-step-{state['step']:07d}"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        r = accelerator.process_index
        torch.save(_rng_state(), tmp / f"rng-{r}.pt")
        torch.save(method.state_dict(), tmp / f"method-{r}.pt")
        accelerator.wait_for_everyone()
        if main:
            torch.save(encoder.state_dict(), tmp / "model.pt")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if scaler is not None:
                torch.save(scaler.state_dict(), tmp / "scaler.pt")
            write_json_atomic(tmp / "state.json", state)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            kept = sorted(p for p in (out / CKPT_DIR).glob("step-*") if (p / "state.json").is_file())
            for old in kept[:-args.save_total_limit] if args.save_total_limit else []:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    if resumed is None and args.has_dev and args.eval_at_start:  # the starting model's dev score, for reference
        evaluate()

    bar = tqdm(total=total, initial=state["step"], disable=not (main and args.progress), desc=f"train {args.method}",
               unit="step", dynamic_ncols=True)
    count_samples = getattr(method, "samples", lambda batch: None)
    trained = 0  # examples this process trained on since the last log row (the real batches, not the nominal)
    t_last = time.time()
    window: list[float] = []
    window_logs: dict[str, list[float]] = {}
    micro = 0
    done = state["step"] >= total or bool(args.stop_after_steps and state["step"] >= args.stop_after_steps)
    optimizer.zero_grad(set_to_none=True)
    while not done:
        epoch = state["epoch"]
        batches = first if epoch == 0 and first is not None else method.batches(epoch)
        first = None
        skip = state["batch_in_epoch"]
        if skip and hasattr(batches, "__getitem__") and hasattr(batches, "__len__"):
            numbered = ((j, batches[j]) for j in range(skip, len(batches)))  # resume without building skipped batches
        else:
            numbered = enumerate(batches)
        for i, batch in numbered:
            if i < skip:
                continue
            view = CachedEncoder(encoder, args.grad_cache_chunk, amp) if args.grad_cache_chunk else encoder
            with amp():
                loss, values = method.loss(view, batch)
            scaled = loss / args.grad_accum
            if scaler is not None:
                scaled = scaler.scale(scaled)
            if args.grad_cache_chunk:
                view.backward(scaled)
            else:
                scaled.backward()
            n = count_samples(batch)
            trained += args.batch_size if n is None else n
            window.append(float(loss.detach()))
            for k, v in (values or {}).items():
                window_logs.setdefault(k, []).append(float(v))
            micro += 1
            state["batch_in_epoch"] = i + 1
            if micro % args.grad_accum:
                continue
            dist_utils.average_gradients(params)
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                         if args.max_grad_norm > 0 else None)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step(encoder)
            state["step"] += 1
            bar.update(1)
            step = state["step"]
            if step % args.log_steps == 0 or step == total:
                loss_value, samples = float(np.mean(window)), float(trained)
                if world > 1:
                    t = torch.tensor([loss_value, samples], device=device, dtype=torch.float64)
                    torch.distributed.all_reduce(t)
                    loss_value, samples = float(t[0]) / world, float(t[1])
                now = time.time()
                row = {"step": step, "epoch": epoch, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                       "samples": int(samples), "samples_per_s": round(samples / max(now - t_last, 1e-9), 3),
                       **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                       **{k: float(np.mean(v)) for k, v in window_logs.items()}}
                logger.write(row)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{row['lr']:.2e}")
                t_last, trained = now, 0
                window, window_logs = [], {}
            if step >= total or (args.stop_after_steps and step >= args.stop_after_steps):
                done = True
            end_of_epoch = steps_per_epoch is not None and state["batch_in_epoch"] >= steps_per_epoch * args.grad_accum
            if (args.eval_steps and step % args.eval_steps == 0) or (not args.eval_steps and end_of_epoch) or done:
                if end_of_epoch:
                    state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
                evaluate()
            if (args.save_steps and step % args.save_steps == 0) or (not args.save_steps and end_of_epoch) or done:
                if end_of_epoch:
                    state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
                save_checkpoint()
            if done or end_of_epoch:
                break
        else:  # the epoch's batches ran out (a leftover micro-batch short of grad_accum is dropped)
            pass
        if not done:
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            micro = 0
            optimizer.zero_grad(set_to_none=True)
    bar.close()

    result = {"steps": state["step"], "best": None, "final": str(out / "final"), "best_dev_ndcg@10": state["best"],
              "best_step": state["best_step"]}
    if main:
        with model_lengths():
            _save_encoder(encoder, out / "final")
        if state["best"] is not None:
            result["best"] = str(out / "best")
        result["wall_s"] = round(time.time() - t_start, 1)
        result["command"] = command
        write_json_atomic(out / "train_summary.json", result)
        if args.log_path.is_file():
            try:
                plot_curve(args.log_path, out / "training_curve.png", title=args.method)
            except Exception as e:  # a plot must never lose a trained model
                log.warning("could not plot the training curve: %s", e)
    accelerator.wait_for_everyone()
    return result


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
    re-encodes documents."""
    from ..data.negatives import read_negatives
    from .data import DevEvaluator, load_train_data

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
