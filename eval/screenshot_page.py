"""Regenerate ``docs/search-page.png``: the search page (``dretriever/search/page.py``) showing real hits.

Builds a throwaway datastore in a temporary folder from SciFact's first ``--docs`` documents (encoder
all-MiniLM-L6-v2, BM25, the abstract's length declared as the int filter key ``words``), serves it on 127.0.0.1,
opens ``/`` in Debian's headless chromium (the helpers of ``tests/test_search_page.py``), runs one search and
saves the page. Nothing but the PNG is written outside the temporary folder. About a minute on two CPU cores::

    .venv/bin/python eval/screenshot_page.py [--docs 300] [--query TEXT] [--mode dense] [--k 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_search_page import chromium, open_page, search_on_page  # noqa: E402
from tests.test_server import serving  # noqa: E402

from dretriever.index.datastore import DatastoreArgs, build_datastore  # noqa: E402
from dretriever.search.retriever import Retriever  # noqa: E402
from dretriever.search.server import create_app  # noqa: E402

SCIFACT = REPO.parent / "shared" / "beir" / "scifact" / "corpus.jsonl"
WIDTH = 1200


def corpus(source: Path, docs: int, out: Path) -> Path:
    """The first ``docs`` documents of ``source`` with ``words`` (the text's length in words) added."""
    with source.open() as f, out.open("w") as w:
        for _, line in zip(range(docs), f):
            doc = json.loads(line)
            w.write(json.dumps({"_id": doc["_id"], "title": doc["title"], "text": doc["text"],
                                "words": len(doc["text"].split())}) + "\n")
    return out


def screenshot(driver, out: Path, max_height: int) -> None:
    """Save the whole page (up to ``max_height`` pixels) as a PNG: the window is resized to the content first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(height, max_height))
    inner = driver.execute_script("return window.innerHeight")  # the window's frame takes some of its height
    driver.set_window_size(WIDTH, min(height, max_height) + (min(height, max_height) - inner))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(driver.get_screenshot_as_png())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=SCIFACT, help="BEIR corpus.jsonl to take documents from")
    p.add_argument("--docs", type=int, default=300, help="documents indexed, the first of --source")
    p.add_argument("--query", default="white matter development in the brains of preterm infants")
    p.add_argument("--mode", default="dense", choices=["dense", "bm25", "hybrid"])
    p.add_argument("--k", type=int, default=3, help="hits shown")
    p.add_argument("--min_words", default="150", help="the filter typed into words 'from' (dense mode; '' for none)")
    p.add_argument("--max_height", type=int, default=1600, help="tallest screenshot, in pixels")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "search-page.png")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="page-shot-") as tmp:
        root = Path(tmp)
        build_datastore(DatastoreArgs(sources=[str(corpus(args.source, args.docs, root / "corpus.jsonl"))],
                                      output=str(root / "ds"), shards=2, bm25=True, filter_keys="words:int",
                                      precision="fp32", progress=False))
        app = create_app(Retriever.load(root / "ds", precision="fp32"), name="scifact")
        with serving(app) as client, chromium(WIDTH, 900) as driver:
            open_page(driver, str(client.base_url), None)
            filters = {"filter-words-gte": args.min_words} if args.min_words else None
            search_on_page(driver, args.query, args.mode, args.k, filters)
            screenshot(driver, args.out, args.max_height)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
