"""A real local Ray cluster for the Ray tests, started by the tests themselves (one per session).

``ray.init`` starts a head node owned by this process (GCS, raylet, object store; no dashboard), with 4 logical
CPUs on the 2 cores so that two encoder actors (the "2 CPU workers") and the reading tasks fit beside each
other: with 2 logical CPUs, two 1-CPU actors hold both and Ray Data's read task waits forever. Commands run in
a subprocess join it with ``--address`` (the fixture's value). Ray is a required test dependency
(``scripts/setup.sh`` installs the ``ray`` extra), so a missing Ray fails rather than skips.

Ray's core worker installs signal handlers over those of a JVM already running in the process (Pyserini's
Lucene), and that JVM then dies of SIGSEGV (its own, normally handled ones); so the Ray tests run in a pytest
process of their own, started before any JVM (``scripts/test.sh`` runs them after the rest of the suite).
"""

from __future__ import annotations

import os
import sys

import pytest

LOGICAL_CPUS = 4


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of the session's local Ray cluster (``ray.init`` in this process; shut down at the end)."""
    if "jnius" in sys.modules:  # Pyserini's JVM runs in this process: Ray's signal handlers would crash it
        pytest.fail("the Ray tests need a process of their own (a JVM started before ray.init dies of SIGSEGV at "
                    "its next safepoint): run them apart, as scripts/test.sh does")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(num_cpus=LOGICAL_CPUS, include_dashboard=False, logging_level="WARNING")
    address = ray.get_runtime_context().gcs_address
    yield address
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001  (serve was never started)
        pass
    ray.shutdown()
