"""The search page: ``GET /`` answers a browser with a plain HTML page for trying an index by hand.

A query box, the mode (dense / BM25 / hybrid; the modes the index lacks are greyed out), k, one filter field per
metadata key the datastore declares (``/health``'s ``filter_keys``; greyed out outside dense mode, where filters
do not apply), and the hits with title, text, score, document and passage id, shard and the generation that
answered. It is three static files shipped in the package (``static/search.html``, ``search.js``,
``search.css``; no build step, nothing fetched from elsewhere) whose script calls the JSON API itself (``/health``,
``/search``), so what the page shows is what a client gets.

The page's files hold no data, so they are the only requests served without the API key (``is_public``): a
browser cannot send a header when it opens a URL. The key is typed into the page, kept in the tab's
``sessionStorage``, and sent as ``Authorization: Bearer KEY`` on every API call. Hit text is put on the page
as text nodes (never parsed as HTML), and a Content-Security-Policy allows only the page's own script, style
and API calls. The routes are left out of ``/openapi.json`` (they are not part of the API).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

# URL path -> (file in static/, media type). Relative links in the page, so it also works under a path prefix.
FILES = {"/": ("search.html", "text/html; charset=utf-8"),
         "/static/search.js": ("search.js", "text/javascript; charset=utf-8"),
         "/static/search.css": ("search.css", "text/css; charset=utf-8")}

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new release's page shows at once (revalidated, not refetched when unchanged)
}


def is_public(method: str, path: str) -> bool:
    """Whether a request may go without the API key: only fetching the page's own (data-free) files."""
    return method == "GET" and path in FILES


@lru_cache(maxsize=None)
def page_file(name: str) -> bytes:
    """The bytes of ``static/NAME``, read once from the installed package."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


def add_search_page(app: FastAPI) -> None:
    """Route ``GET /`` (and the page's script and style) on ``app``, outside the OpenAPI document."""
    for path, (name, media_type) in FILES.items():
        app.add_api_route(path, _responder(name, media_type), methods=["GET"], include_in_schema=False)


def _responder(name: str, media_type: str):
    """A route function answering with ``static/NAME`` (a closure: the name is no request parameter)."""
    def serve() -> Response:
        return Response(page_file(name), media_type=media_type, headers=HEADERS)

    return serve
