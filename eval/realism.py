"""Realism check of eval/synthetic.py: do synthetic vectors behave like the real embeddings under ANN search?

At SciFact's size (5,183 all-MiniLM-L6-v2 document vectors), the same protocol runs on the real vectors
and on 5,183 vectors sampled from the :class:`~eval.synthetic.VectorModel` fitted to them:

* each repeat holds out ``--queries`` random vectors as queries and indexes the rest (inner product);
* ground truth: exact top-10 (``IndexFlatIP``);
* HNSW32 (``IndexHNSWFlat``, efConstruction 40) searched at ``--ef``; IVF``--nlist`` (``IndexIVFFlat``,
  k-means trained on the indexed vectors) searched at ``--nprobe``; one faiss thread (deterministic);
* recall@10 = |ANN top-10 & exact top-10| / 10, averaged over queries, then over ``--repeats`` repeats
  (real: a new random split each repeat; synthetic: a new sample and split each repeat).

The fixed parameters (ef, nprobe) decide the check: it fails (exit 1) if |real - synthetic| > ``--tol``
for either index. The neighbouring parameter values and some neighbourhood statistics are printed too,
for information. ``--also C:R ...`` adds other models (cells:rank) to the table: what was tried.

    nice -n 10 python eval/realism.py --out eval/reports/scale/realism.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``eval.synthetic`` importable
    sys.path.insert(0, str(REPO))

from eval import synthetic  # noqa: E402
from eval.synthetic import VectorModel, scifact_embeddings  # noqa: E402

K = 10


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2/avx512"


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def evaluate(X: np.ndarray, queries: int, split_seed: int, efs: list[int], nprobes: list[int], nlist: int) -> dict:
    """Recall@10 of HNSW32 at each ef and IVF``nlist`` at each nprobe, plus neighbourhood statistics."""
    perm = np.random.default_rng(split_seed).permutation(len(X))
    q, db = X[perm[:queries]], np.ascontiguousarray(X[perm[queries:]])
    d = X.shape[1]
    flat = faiss.IndexFlatIP(d)
    flat.add(db)
    sims, truth = flat.search(q, K)
    out = {"top1": float(sims[:, 0].mean()), "top10": float(sims[:, K - 1].mean())}
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(db)
    for ef in efs:
        hnsw.hnsw.efSearch = ef
        out[f"hnsw.ef{ef}"] = recall(hnsw.search(q, K)[1], truth)
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = 1234
    ivf.train(db)
    ivf.add(db)
    for p in nprobes:
        ivf.nprobe = p
        out[f"ivf.np{p}"] = recall(ivf.search(q, K)[1], truth)
    return out


def mean_over(runs: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def std_over(runs: list[dict]) -> dict:
    return {k: float(np.std([r[k] for r in runs])) for k in runs[0]}


BEGIN, END = "<!-- realism.py: begin -->", "<!-- realism.py: end -->"


def write_section(path: Path, body: str) -> None:
    """Replace the text between the markers in ``path`` (notes outside them are kept), or create the file."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{BEGIN}\n{body}{END}"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = f"# Realism of the synthetic vectors (eval/synthetic.py)\n\n{block}\n" + old
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=None, help="mixture cells (default: eval.synthetic.DEFAULT_CELLS)")
    p.add_argument("--rank", type=int, default=None, help="residual PCA rank per cell (default: DEFAULT_RANK)")
    p.add_argument("--fit_seed", type=int, default=0)
    p.add_argument("--noise_scale", type=float, default=1.0, help="isotropic noise factor (1 = as fitted)")
    p.add_argument("--also", nargs="*", default=[], metavar="CELLS:RANK[:NOISE]", help="other models to report")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ef", type=int, default=10, help="HNSW32 efSearch that decides the check")
    p.add_argument("--nlist", type=int, default=64)
    p.add_argument("--nprobe", type=int, default=2, help="IVF nprobe that decides the check")
    p.add_argument("--tol", type=float, default=0.03)
    p.add_argument("--out", default="", help="also write the result as markdown here")
    args = p.parse_args(argv)

    cells = args.cells or synthetic.DEFAULT_CELLS
    rank = synthetic.DEFAULT_RANK if args.rank is None else args.rank
    faiss.omp_set_num_threads(1)
    efs = sorted({10, 16, 32, args.ef})
    nprobes = sorted({1, 2, 4, 8, args.nprobe})

    t0 = time.time()
    _, X = scifact_embeddings()
    n = len(X)
    real = [evaluate(X, args.queries, 100 + r, efs, nprobes, args.nlist) for r in range(args.repeats)]
    rows = [("real", None, mean_over(real), std_over(real))]
    models = [(cells, rank, args.noise_scale)]
    for spec in args.also:
        c, r, *ns = spec.split(":")
        models.append((int(c), int(r), float(ns[0]) if ns else 1.0))
    for c, r, ns in models:
        model = (synthetic.scifact_model(cells=c, rank=r, seed=args.fit_seed, noise_scale=ns) if args.fit_seed == 0
                 else VectorModel.fit(X, cells=c, rank=r, seed=args.fit_seed, noise_scale=ns))
        syn = [evaluate(model.sample(n, seed=1 + rep), args.queries, 100 + rep, efs, nprobes, args.nlist)
               for rep in range(args.repeats)]
        rows.append((f"synthetic c{c} r{r}" + (f" noise x{ns:g}" if ns != 1.0 else ""), (c, r), mean_over(syn),
                     std_over(syn)))

    keys = ["top1", "top10"] + [f"hnsw.ef{e}" for e in efs] + [f"ivf.np{q}" for q in nprobes]
    hk, ik = f"hnsw.ef{args.ef}", f"ivf.np{args.nprobe}"
    real_mean = rows[0][2]
    chosen = rows[1][2]
    d_h, d_i = chosen[hk] - real_mean[hk], chosen[ik] - real_mean[ik]
    ok = abs(d_h) <= args.tol and abs(d_i) <= args.tol

    lines = [
        f"CPU: {cpu_name()} ({cpu_flags()}), faiss {faiss.__version__}, numpy {np.__version__}, 1 faiss thread",
        f"vectors: {n} x {X.shape[1]} (SciFact, all-MiniLM-L6-v2), per repeat {args.queries} held out as queries "
        f"and {n - args.queries} indexed; {args.repeats} repeats; recall@{K} against exact inner-product search",
        f"indexes: HNSW32 (efConstruction 40) at efSearch {args.ef}; IVF{args.nlist},Flat (inner product) at "
        f"nprobe {args.nprobe}; model: {cells} cells, residual rank {rank}, noise x{args.noise_scale:g}, "
        f"fit seed {args.fit_seed}",
        "",
        "| check (fixed parameters) | real | synthetic | difference | within |",
        "|---|---|---|---|---|",
        f"| HNSW32 efSearch={args.ef} recall@10 | {real_mean[hk]:.4f} | {chosen[hk]:.4f} | {d_h:+.4f} | "
        f"{'yes' if abs(d_h) <= args.tol else 'NO'} (tol {args.tol}) |",
        f"| IVF{args.nlist} nprobe={args.nprobe} recall@10 | {real_mean[ik]:.4f} | {chosen[ik]:.4f} | {d_i:+.4f} | "
        f"{'yes' if abs(d_i) <= args.tol else 'NO'} (tol {args.tol}) |",
        "",
        "All values (mean over repeats, +- std across repeats); top1/top10 = mean inner product of the exact "
        "1st / 10th neighbour:",
        "",
        "| set | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, _, m, s in rows:
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f} +- {s[k]:.3f}" for k in keys) + " |")
    lines += ["", f"result: {'PASS' if ok else 'FAIL'} ({time.time() - t0:.0f} s)"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        cmd = "python eval/realism.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        write_section(Path(args.out), f"Command: `{cmd.strip()}`\n\n{text}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
