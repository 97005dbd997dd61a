"""Where a command runs: ``--engine local`` (this machine's processes; ``accelerate launch`` for several) or
``--engine ray`` (a Ray cluster: ``dretriever/ray/``). The options only; commands pick the implementation, so
nothing below the commands imports Ray."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DretrieverError

ENGINES = ("local", "ray")


@dataclass
class EngineArgs:
    engine: str = field(default="local", metadata={"help": "where the work runs: local (this machine) | ray (a "
                                                           "Ray cluster; pip install 'dretriever[ray]')"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                                                                "(default: $RAY_ADDRESS, else a local cluster)"})
    workers: int = field(default=0, metadata={"help": "Ray encoder actors, a count (0: one per GPU, else one "
                                                      "per worker_cpus of the cluster's CPUs, less one for reading)"})
    worker_cpus: float = field(default=1.0, metadata={"help": "CPUs per Ray encoder actor (its torch threads), a "
                                                              "count"})

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise DretrieverError(f"engine: expected one of {ENGINES}, got {self.engine!r}")
        if self.workers < 0 or self.worker_cpus <= 0:
            raise DretrieverError("workers must not be negative and worker_cpus must be positive")
        if self.address and self.engine != "ray":
            raise DretrieverError("address: only used with --engine ray")
