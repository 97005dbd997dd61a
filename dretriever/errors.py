"""The one exception type users see for bad input: it names the file and line (or field) at fault."""

from __future__ import annotations


class DretrieverError(Exception):
    """Bad input or state. The CLI prints the message and exits with status 2."""


class DataError(DretrieverError):
    """A problem in an input file, located by path and (where known) 1-based line number."""

    def __init__(self, path, message: str, line: int | None = None):
        self.path, self.line = str(path), line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class Unavailable(DretrieverError):
    """A part of the service is down for now (a Ray shard group being replaced): the HTTP API answers 503,
    and the request may be retried."""
