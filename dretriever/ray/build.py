"""``--engine ray`` for ``datastore build`` and ``index build``: the same shards and manifest, encoded on a Ray cluster.

The build's phases (``index/build.py``) are kept; only the encode and finish phases move to the cluster:

1. **stage** and **train** run in the driver, as on one machine (one pass over the sources; the staged doc
   stores are the chunks' input, so every node must see the output folder: a shared file system).
2. **encode**: a Ray Dataset of the uncommitted chunks (``shard, start, stop``; the build's ``chunk_docs``)
   goes through ``map_batches`` with :class:`EncodeChunks`, a pool of stateful actors (the model loads once
   per actor; one GPU per actor when the cluster has GPUs, ``worker_cpus`` CPUs and as many torch threads
   otherwise). Each actor reads its chunk's passages from the staged doc store and returns the vectors.
   The driver appends them to the shard's ``vectors.f32`` and commits each chunk in the manifest, in order,
   exactly like the single-machine build (``encode_runs`` names this run).
3. **finish**: as soon as a shard's last chunk is committed, one Ray task (``finish_shard``) writes the shard's
   faiss index, docids and doc-store columns into the usual shard folder and marks it done, while other
   shards are still encoding.

Faults: an actor killed mid-chunk is restarted by Ray Data and its chunk retried; a finish task killed is
retried (``finish_shard`` is idempotent); a killed driver loses at most the chunks in flight, and a rerun
resumes from the manifest's committed chunks and done shards, as on one machine.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..engine import EngineArgs
from ..errors import DretrieverError
from ..heap import trim_heap
from ..stages import stage, staged_iter
from ..index import manifest as mf
from ..index import vectors as vf
from ..index.build import Builder, BuildSettings, ShardedSource, _commit_chunk, finish_shard, partial_dir
from ..index.docstore import FILENAME as DOCSTORE
from ..index.docstore import DocStore
from ..quantize import CALIBRATION_FILE, Calibration
from . import connect

log = logging.getLogger(__name__)


class EncodeChunks:
    """A Ray Data actor: ``{shard, start, stop}`` rows in, the same rows with their passages' vectors out."""

    def __init__(self, out: str, model: str, fingerprint: str, backend: str, batch_size: int, precision: str,
                 max_tokens, threads: int):
        import torch

        from ..encoder import BiEncoder

        torch.set_num_threads(max(1, threads))
        self.out = Path(out)
        calibration = Calibration.read(self.out / CALIBRATION_FILE) if backend == "onnx-int8" else None
        self.encoder = BiEncoder.from_pretrained(model, backend=backend, calibration=calibration)
        if self.encoder.fingerprint() != fingerprint:  # another model under the same name on this node
            raise DretrieverError(f"model: {model} on {os.uname().nodename} differs from the driver's "
                                  f"(fingerprint {self.encoder.fingerprint()[:12]} vs {fingerprint[:12]})")
        if torch.cuda.is_available():
            self.encoder.to("cuda")
        self.kw = {"batch_size": batch_size, "precision": precision, "max_tokens": max_tokens}
        self.stores: dict[int, DocStore] = {}

    def __call__(self, batch: dict) -> dict:
        vectors = []
        for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            shard = int(shard)
            if shard not in self.stores:
                self.stores[shard] = DocStore(partial_dir(self.out, shard) / DOCSTORE)
            texts = [doc.contents for _, doc in self.stores[shard].rows(int(start), int(stop))]
            vectors.append(np.ascontiguousarray(self.encoder.encode_docs(texts, **self.kw), dtype=np.float32)
                           .tobytes())
        return {"shard": batch["shard"], "start": batch["start"], "stop": batch["stop"],
                "vectors": np.array(vectors, dtype=object)}


class RayBuilder(Builder):
    """A :class:`Builder` whose encode and finish phases run on a Ray cluster (``engine.address``)."""

    def __init__(self, source: ShardedSource, encoder, out: Path, model: str | None, settings: BuildSettings,
                 engine: EngineArgs, backend: str = "torch"):
        super().__init__(source, encoder, out, model, settings)
        if self.dist.world > 1:
            raise DretrieverError("engine: 'ray' runs from one driver process, not under accelerate launch/torchrun")
        self.engine, self.model, self.backend = engine, model, backend

    def _build_shards(self, manifest: dict) -> None:
        todo = [i for i, e in enumerate(manifest["shards"]) if e["state"] != "done"]
        for e in manifest["shards"]:
            if e["state"] == "done":
                log.info("%s: done, skipped", e["dir"])
        if not todo:
            return
        ray = connect(self.engine.address)
        finish = ray.remote(num_cpus=1, max_retries=3)(finish_shard)
        finishing = []
        chunks, size = [], self.s.chunk_docs
        for i in todo:
            e = manifest["shards"][i]
            if e["encoded"] >= e["num_docs"]:
                finishing.append(finish.remote(str(self.out), i, self.dim, self.s))
            chunks += [{"shard": i, "start": a, "stop": min(a + size, e["num_docs"])}
                       for a in range(e["encoded"], e["num_docs"], size)]
        if chunks:
            self._encode_on_ray(ray, chunks, manifest, lambda i: finishing.append(
                finish.remote(str(self.out), i, self.dim, self.s)))
        ray.get(finishing)

    def _workers(self, ray) -> tuple[int, float, float]:
        """(actors, CPUs per actor, GPUs per actor) for this cluster."""
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 1)
        per_cpu = self.engine.worker_cpus
        if gpus:
            return self.engine.workers or gpus, per_cpu, 1.0
        workers = self.engine.workers or max(1, int((cpus - 1) // per_cpu))
        return workers, per_cpu, 0.0

    def _encode_on_ray(self, ray, chunks: list[dict], manifest: dict, on_shard_encoded) -> None:
        if self.encoder is None:
            raise DretrieverError("an encoder is needed to encode on Ray")
        workers, cpus, gpus = self._workers(ray)
        log.info("ray: encoding %d chunks with %d actors (%g CPU, %g GPU each)", len(chunks), workers, cpus, gpus)
        ctx = ray.data.DataContext.get_current()  # this process's; restored after the build
        saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
        ctx.execution_options.preserve_order = True  # chunks come back in order: the driver commits as they come
        ctx.enable_progress_bars = False
        try:  # the context is read when the dataset is made
            dataset = ray.data.from_items(chunks).map_batches(
                EncodeChunks, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus,
                num_gpus=gpus,
                fn_constructor_kwargs=dict(out=str(self.out), model=self.model, fingerprint=self.info["fingerprint"],
                                           backend=self.backend, batch_size=self.s.batch_size,
                                           precision=self.s.precision, max_tokens=self.s.max_tokens,
                                           threads=max(1, int(cpus))))
            self._commit_chunks(dataset, chunks, manifest, on_shard_encoded, workers)
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved

    def _commit_chunks(self, dataset, chunks: list[dict], manifest: dict, on_shard_encoded, workers: int) -> None:
        """Append each chunk's vectors to its shard and commit it in the manifest, in row order."""
        appenders: dict[int, vf.VectorAppender] = {}
        waiting: dict[int, dict[int, tuple[int, np.ndarray]]] = {}  # shard -> start -> (stop, vectors): out of order
        next_row = {c["shard"]: manifest["shards"][c["shard"]]["encoded"] for c in chunks}
        total = {i: manifest["shards"][i]["num_docs"] for i in next_row}
        bar = tqdm(total=sum(c["stop"] - c["start"] for c in chunks), desc="encode (ray)", unit="passage",
                   disable=not self.s.progress)
        first, rows_after_first = None, 0  # steady-state rate: from the first chunk back (actors started)
        for row in staged_iter(dataset.iter_rows(), "encode"):  # the driver's wait for the actors
            if first is None:
                first = time.perf_counter()
            else:
                rows_after_first += int(row["stop"]) - int(row["start"])
            i, start, stop = int(row["shard"]), int(row["start"]), int(row["stop"])
            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(stop - start, self.dim)
            waiting.setdefault(i, {})[start] = (stop, vectors)
            while next_row[i] in waiting[i]:
                a = next_row[i]
                b, vecs = waiting[i].pop(a)
                if i not in appenders:
                    appenders[i] = vf.VectorAppender(partial_dir(self.out, i) / vf.WORK, self.dim, a)
                with stage("write"):
                    appenders[i].append(vecs)
                    appenders[i].commit()
                    mf.update_manifest(self.out, lambda m, i=i, a=a, b=b: _commit_chunk(m["shards"][i], a, b,
                                                                                         self.run_id))
                next_row[i] = b
                bar.update(b - a)
                if b == total[i]:
                    appenders.pop(i).close()
                    on_shard_encoded(i)
            trim_heap()
        bar.close()
        if first is not None and rows_after_first:
            seconds = time.perf_counter() - first
            log.info("ray: steady encoding %.1f passages/s (%d passages after the first chunk, %.1f s, %d actors)",
                     rows_after_first / seconds, rows_after_first, seconds, workers)
        short = {i: (next_row[i], total[i]) for i in next_row if next_row[i] != total[i]}
        if short:
            raise DretrieverError(f"ray: chunks missing after encoding (shard: encoded, rows): {short}")


def ray_builder(engine: EngineArgs, backend: str = "torch"):
    """The ``builder`` argument of ``build_index`` for ``--engine ray``."""

    def make(source, encoder, out, model, settings):
        return RayBuilder(source, encoder, out, model, settings, engine, backend)

    return make
