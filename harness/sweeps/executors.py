"""Sweep executors: `local` (runs one after another in this process) and `ray` (each run a Ray task).

A Ray task runs `harness.sweeps.sweep.run_one` on a worker, which takes the run's lock in the shared results
directory, writes its record there and returns the outcome, so the guarantees of a local sweep hold on a
cluster: finished runs are skipped, no spec runs twice at once, a failure is recorded and the sweep goes on.
Workers must see the same results directory (a shared filesystem with working `flock`, e.g. NFSv4 or Lustre)
and, for cached models and masks, the same UNLEARN_BENCH_CACHE.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from harness.api import Executor
from harness.config import option
from harness.errors import UnlearnBenchError
from harness.hookspecs import hookimpl

log = logging.getLogger(__name__)

# passed to Ray workers, which do not inherit the driver's environment on a remote cluster
FORWARDED_ENV = ("UNLEARN_BENCH_CACHE", "UNLEARN_BENCH_LOAD_PLUGINS", "UNLEARN_BENCH_ONLINE", "HF_HOME",
                 "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")


@dataclass
class LocalConfig:
    pass


class Local(Executor):
    """Every run in this process, in grid order."""

    name = "local"
    Config = LocalConfig

    def run(self, jobs: Sequence[Callable[[], str]]) -> Iterator[tuple[int, str]]:
        for i, job in enumerate(jobs):
            yield i, job()


@dataclass
class RayConfig:
    address: str | None = option(None, "Ray cluster to join (host:6379, or ray://host:10001 for Ray Client); "
                                       "null: $RAY_ADDRESS, else a Ray started on this machine")
    gpus_per_run: float = option(0.0, "GPUs a run asks for (1 for a 7B run on one GPU; fractions share a GPU)")
    cpus_per_run: float = option(1.0, "CPUs a run asks for")
    memory_gb_per_run: float | None = option(None, "host memory a run asks for, in GB (null: no reservation)")

    def validate(self) -> None:
        if self.gpus_per_run < 0 or self.cpus_per_run < 0:
            raise ValueError("gpus_per_run and cpus_per_run must be >= 0")


def _call(job: Callable[[], str]) -> str:
    return job()


class Ray(Executor):
    """Each run a Ray task with the resources it needs; results come back as the tasks end."""

    name = "ray"
    Config = RayConfig

    def run(self, jobs: Sequence[Callable[[], str]]) -> Iterator[tuple[int, str]]:
        try:
            import ray
        except ImportError as exc:
            raise UnlearnBenchError("executor 'ray' needs Ray: pip install 'unlearn-bench[ray]'") from exc
        c = self.config
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        ray.init(address=c.address, ignore_reinit_error=True, runtime_env={"env_vars": env} if env else None,
                 include_dashboard=False if c.address is None else None, log_to_driver=True)
        options = {"num_gpus": c.gpus_per_run, "num_cpus": c.cpus_per_run, "max_retries": 0}
        if c.memory_gb_per_run:
            options["memory"] = int(c.memory_gb_per_run * 2**30)
        remote = ray.remote(_call).options(**options)
        pending = {remote.remote(job): i for i, job in enumerate(jobs)}
        log.info("submitted %d runs to Ray (%s GPU, %s CPU each)", len(pending), c.gpus_per_run, c.cpus_per_run)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    yield i, ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died or the task could not run
                    log.error("run %d lost on Ray: %s", i, str(exc).splitlines()[0] if str(exc) else type(exc))
                    yield i, "lost"


@hookimpl
def register_executors(register) -> None:
    register(Local)
    register(Ray)
