"""The tests' real HTTP server: an ASGI app served by uvicorn in a daemon thread on a free port of 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator


def start(app, **config) -> tuple[str, Callable[[], None]]:
    """Serve ``app`` (``config``: more ``uvicorn.Config`` options); returns its base URL and a function that stops
    it. Returns once uvicorn has started, or fails after 30 s."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"

    def stop():
        server.should_exit = True
        thread.join(10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


@contextmanager
def serving(app, **config) -> Iterator[str]:
    """:func:`start` as a context: yields the base URL, stops the server on exit."""
    url, stop = start(app, **config)
    try:
        yield url
    finally:
        stop()
