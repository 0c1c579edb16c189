"""Shared set-up for the benchmark scripts: the model, tofu-mini's forget/retain batches, timers and a
peak-memory probe. Benchmarks are scripts, not tests: each prints measurements side by side and their ratio."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from harness.learn.data import make_batches
from harness.plugins import get_registry
from harness.run import models, prepare
from harness.run.spec import PrepareConfig


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="smollm2-135m", help="base model (tiny-llama for a quick check)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (the median is reported)")
    return p


def target_model(base: str):
    """tofu-mini's target model (fine-tuned and cached on first use) and the task."""
    task = get_registry().build("task", "tofu-mini", {})
    path, _ = prepare.ensure_model(task, base, "target", PrepareConfig())
    model, tok = models.load(path)
    return task, model, tok


def batches(task, tok, size: int = 8):
    forget = make_batches(tok, task.forget_examples(), size, task.config.max_length)
    retain = make_batches(tok, task.retain_examples()[: len(task.forget_examples())], size, task.config.max_length)
    return forget, retain


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _probe(target, args, queue) -> None:
    setup, run = target(*args)
    state = setup()
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:  # torch kernels release the GIL, so this thread sees the peak while they run
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = run(state)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    queue.put((seconds, (peak[0] - base) / 2**20, result))


def peak_extra_mb(target: Callable, *args) -> tuple[float, float, Any]:
    """Run `setup, run = target(*args)` in a fresh process: (seconds of run, MB of resident memory that run
    added at its peak over what was resident after setup, sampled every 2 ms; run's picklable result)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_probe, args=(target, args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def header(title: str) -> None:
    print(f"== {title} ==  (torch {torch.__version__}, {torch.get_num_threads()} threads)")
