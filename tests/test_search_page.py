"""The search page (``search/page.py``) in a real browser: Debian's headless chromium, driven by selenium through
chromedriver, against the real server on 127.0.0.1 over a tiny datastore (SciFact's first documents, with BM25
and two declared filter keys). What the page shows must be what ``/search`` answers for the same request.

Chromium and chromedriver come from apt (``.ci/run`` installs them); without them the test skips, except
under CI (``CI=true``), where it fails. The helpers below also drive ``eval/screenshot_page.py``."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import small_datastore
from tests.test_server import AUTH, KEY, serving

from dretriever.search.retriever import Retriever
from dretriever.search.server import create_app

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 30
DOCS = 24


def need_browser() -> None:
    """Skip (outside CI) or fail (``CI=true``) unless chromium, chromedriver and selenium are installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip: the test extra)")
    if missing:
        message = (f"the search page test needs {', '.join(missing)} "
                   "(apt-get install chromium chromium-driver; .ci/run installs them)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def chromium(width: int = 1200, height: int = 900):
    """A headless chromium (Debian's) under selenium; closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message=what)


def by_id(driver, id_: str):
    return driver.find_element("id", id_)


def open_page(driver, url: str, key: str | None) -> None:
    """Open the page; type the API key (when given) and wait for ``/health`` to fill in the server line."""
    from selenium.webdriver.common.keys import Keys

    driver.get(url)
    if key is not None:
        wait(driver, lambda d: "API key" in by_id(d, "server").text, "the page asks for the API key")
        by_id(driver, "key").send_keys(key + Keys.TAB)  # the change event reloads /health with the key
    wait(driver, lambda d: d.find_elements("id", "generation"), "the server line shows the generation")


def search_on_page(driver, query: str, mode: str, k: int, filters: dict[str, str] | None = None) -> None:
    """Fill in the form (``filters``: filter field id -> text, the others emptied) and submit it; returns when
    the page has shown this search's answer (hits or an error)."""
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, "mode")).select_by_value("dense")  # the filter fields take input in dense mode only
    for field in driver.find_elements("css selector", "#filters input"):
        field.clear()
        if filters and field.get_attribute("id") in filters:
            field.send_keys(filters[field.get_attribute("id")])
    Select(by_id(driver, "mode")).select_by_value(mode)
    for id_, value in (("k", str(k)), ("query", query)):
        by_id(driver, id_).clear()
        by_id(driver, id_).send_keys(value)
    before = by_id(driver, "search-form").get_attribute("data-answered")
    by_id(driver, "submit").click()
    wait(driver, lambda d: by_id(d, "search-form").get_attribute("data-answered") != before, "the answer is shown")


# The hits as the page holds them (text nodes read back, not HTML), in one round trip to the browser.
READ_HITS = """
const text = (item, cls) => { const node = item.querySelector("." + cls); return node ? node.textContent : null; };
return [...document.querySelectorAll("#hits > li")].map((item) => ({
  id: item.dataset.id, doc_id: item.dataset.docId, shard: item.dataset.shard, score: item.dataset.score,
  score_shown: text(item, "score"), title: text(item, "title"), text: text(item, "text"),
  passage_id: text(item, "passage-id"), doc_id_shown: text(item, "doc-id"), shard_shown: text(item, "shard"),
  words: text(item, "meta-words"), source: text(item, "meta-source")}));
"""


def shown_hits(driver) -> list[dict]:
    """The hits on the page: ids, title, text, shard and score (full and shown), metadata shown."""
    hits = driver.execute_script(READ_HITS)
    for h in hits:
        h["shard"], h["score"] = int(h["shard"]), float(h["score"])
        h["metadata"] = {key: h.pop(key) for key in ("words", "source") if h[key] is not None}
    return hits


def assert_shown(shown: list[dict], hits: list[dict]) -> None:
    """The page shows exactly ``hits`` (``/search``'s), in order: ids, title, text, shard, score."""
    assert [h["id"] for h in shown] == [h["id"] for h in hits]
    for s, h in zip(shown, hits):
        assert (s["doc_id"], s["doc_id_shown"], s["passage_id"]) == (h["doc_id"], h["doc_id"], h["id"])
        assert (s["title"], s["text"]) == (h["title"], h["text"])
        assert s["shard"] == h["shard"] and s["shard_shown"] == str(h["shard"])
        assert s["score"] == h["score"]  # the full value; the visible one to 4 decimals
        assert abs(float(s["score_shown"]) - h["score"]) <= 5.1e-5
        assert s["metadata"] == {key: str(h["metadata"][key]) for key in ("words", "source") if key in h["metadata"]}


MARKUP_TITLE = "<i>Markup</i> & <b>tags</b> stay text"
MARKUP_TEXT = "zygomorphic <img src=x onerror=\"document.title='pwned'\"> <script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def datastore(scifact_dir, tiny_model, tmp_path_factory) -> Path:
    """SciFact's first documents with ``words`` (int: the abstract's length) and ``source`` (str: synthetic
    labels, every other document) declared as filter keys, plus one document whose title and text are markup."""
    root = tmp_path_factory.mktemp("page")
    (root / "beir").mkdir()
    rows = []
    with (scifact_dir / "corpus.jsonl").open() as f:
        for i, line in zip(range(DOCS - 1), f):
            doc = json.loads(line)
            rows.append({"_id": doc["_id"], "title": doc["title"], "text": doc["text"],
                         "words": len(doc["text"].split()), "source": ("pubmed", "pmc")[i % 2]})
    rows.append({"_id": "markup", "title": MARKUP_TITLE, "text": MARKUP_TEXT, "words": 4, "source": "pmc"})
    (root / "beir" / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return small_datastore(root / "beir", tiny_model, root, docs=DOCS, shards=2, bm25=True,
                           filter_keys="words:int,source", precision="fp32")


@pytest.fixture(scope="module")
def server(datastore):
    """The app with an API key, served on 127.0.0.1; yields a client carrying the key."""
    app = create_app(Retriever.load(datastore, precision="fp32"), api_key=KEY, max_k=50)
    with serving(app) as client:
        yield client


def test_the_page_is_served_without_the_key_and_stays_out_of_the_api(server):
    with httpx.Client(base_url=str(server.base_url), timeout=30) as anon:
        page = anon.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="static/search.js"' in page.text and "http" not in page.text  # nothing from elsewhere
        assert anon.get("/static/search.js").headers["content-type"].startswith("text/javascript")
        assert anon.get("/static/search.css").status_code == 200
        assert anon.get("/health").status_code == 401  # the data still needs the key
        assert anon.get("/static/other.js").status_code == 401 and anon.post("/").status_code == 401
    assert server.get("/?name=../server.py").text == page.text  # no request parameter picks a file
    assert "/" not in server.get("/openapi.json").json()["paths"]
    assert server.get("/health").json()["filter_keys"] == {"words": "int", "source": "str"}


def test_the_page_shows_what_search_answers(server):
    need_browser()
    health = server.get("/health").json()
    with chromium() as driver:
        open_page(driver, str(server.base_url), KEY)
        assert by_id(driver, "generation").text == str(health["generation"])
        fields = {f.get_attribute("id") for f in driver.find_elements("css selector", "#filters input")}
        assert fields == {"filter-doc_id-prefix", "filter-words-gte", "filter-words-lte", "filter-source-eq"}

        query = "cerebral white matter development in newborns"
        for mode, k in (("bm25", 5), ("dense", 7), ("hybrid", 4)):
            search_on_page(driver, query, mode, k)
            answer = server.post("/search", json={"query": query, "k": k, "mode": mode}).json()
            assert len(answer["hits"]) == k
            assert_shown(shown_hits(driver), answer["hits"])
            assert by_id(driver, "served-generation").text == str(answer["generation"])
            assert by_id(driver, "count").text == f"{k} hits"

        # filters on the declared keys narrow the hits (dense mode): fewer than k, each one matching
        unfiltered = server.post("/search", json={"query": query, "k": 50, "mode": "dense"}).json()["hits"]
        flt = {"words": {"gte": 200, "lte": 240}, "source": {"eq": "pmc"}}
        answer = server.post("/search", json={"query": query, "k": 50, "mode": "dense", "filter": flt}).json()
        search_on_page(driver, query, "dense", 50, {"filter-words-gte": "200", "filter-words-lte": "240",
                                                     "filter-source-eq": "pmc"})
        shown = shown_hits(driver)
        assert_shown(shown, answer["hits"])
        assert 0 < len(shown) < len(unfiltered) == 50
        assert all(h["metadata"]["source"] == "pmc" and 200 <= int(h["metadata"]["words"]) <= 240 for h in shown)
        search_on_page(driver, query, "dense", 50, {"filter-source-eq": "pmc, pubmed", "filter-doc_id-prefix": "7"})
        either = server.post("/search", json={"query": query, "k": 50, "mode": "dense", "filter": {
            "source": {"in": ["pmc", "pubmed"]}, "doc_id": {"prefix": "7"}}}).json()["hits"]
        assert_shown(shown_hits(driver), either)
        assert all(h["doc_id"].startswith("7") for h in either) and 0 < len(either) < 50


def test_markup_in_hits_stays_text_and_errors_are_shown(server):
    need_browser()
    with chromium() as driver:
        open_page(driver, str(server.base_url), KEY)
        search_on_page(driver, "zygomorphic", "bm25", 3)
        shown = shown_hits(driver)
        assert shown[0]["id"].startswith("markup") and shown[0]["title"] == MARKUP_TITLE
        assert shown[0]["text"] == MARKUP_TEXT
        assert not driver.find_elements("css selector", "#hits img, #hits script, #hits i, #hits b")
        assert driver.title == "dretriever search"  # no handler in the text ran
        search_on_page(driver, "cells", "dense", 51)  # over max_k: the server's 422, shown with its field
        error = by_id(driver, "error").text
        assert error.startswith("k:") and not by_id(driver, "results").is_displayed()
