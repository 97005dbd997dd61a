"""``dretriever serve`` in a child process on a free port of 127.0.0.1, for the scripts that measure it through
HTTP (``load_test.py``, ``datastore_beir.py``): either engine, started and stopped the same way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx

from dretriever.errors import DretrieverError
from dretriever.search.server import API_KEY_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: str, port: int, key: str, options: list[str], engine: str = "local",
                 address: str | None = None, startup_timeout: float = 300.0) -> subprocess.Popen:
    """``dretriever serve INDEX --engine ENGINE`` answering ``/health`` on ``port`` (``--engine ray``: in the cluster
    at ``address``, else a fresh local cluster owned by the child)."""
    env = {**os.environ, API_KEY_ENV: key, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "dretriever", "serve", index, "--host", "127.0.0.1", "--port", str(port),
               "--engine", engine, *options]
    if engine == "ray" and address:
        command += ["--address", address]
    proc = subprocess.Popen(command, env=env)
    deadline = time.time() + startup_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise DretrieverError(f"the server exited with status {proc.returncode} before answering")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", headers={"X-API-Key": key}, timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise DretrieverError(f"the server did not answer /health within {startup_timeout} s")


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGINT (the Ray engine deletes its app and shuts its local cluster down), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def serving(index: str, key: str, options: list[str], engine: str = "local", address: str | None = None,
            startup_timeout: float = 300.0):
    """The server's base URL while the block runs."""
    port = free_port()
    proc = start_server(index, port, key, options, engine, address, startup_timeout)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
