"""`sweep FILE --plan`: every run of a sweep before it starts (tuning runs first), its id, its state in the
results folder (done, failed, pending), and an estimate of its cost.

The estimate counts token passes and turns them into FLOPs as docs/scale.md does: 2·N per token forward and
4·N per token backward, N the model's parameters (read from its config on the meta device). A run's passes:

- attribution (masks scored from data): forward and backward over the forget examples and as many retain ones;
- unlearning: its steps × (batch × accumulation) forget and retain examples forward and backward, plus a
  forward of the reference model where the objective has one. Steps: the budget, min(max_steps, epochs ·
  ⌈forget / batch⌉ / accumulation); under matched forgetting, the median step at which the method's finished
  tuning runs in the results folder reached the level, where there are some;
- matched-forgetting probes: a forward over the forget set and the compared one (utility in a test run,
  validation in a tuning run), with their wrong alternatives, every `check_every` steps (and at the last step
  when the budget ends between checks); with bisection, 8 forget probes and the pair once more at the match;
- the full evaluation: the sequences the task's evaluation scores and the tokens it generates
  (`Task.evaluation_size`; a task that does not say is not estimated there).

Time on this machine: FLOPs / (its measured fp32 matmul rate × 0.58, the share the harness's forward and
backward passes reached on the reference CPU, docs/performance.md); on a GPU: FLOPs / (its dense bf16 peak,
or its fp32 peak for a run that computes in fp32, × 0.35, an assumed efficiency, stated as such). Tokens per
example come from the model's tokenizer where it is on this machine, else from characters / 4.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UnlearnBenchError
from harness.run import records
from harness.run.method import MethodKey

CPU_EFFICIENCY = 0.58  # docs/performance.md: SmolLM2-135M's training step against the 2048² fp32 matmul
GPU_EFFICIENCY = 0.35  # assumed
GPU_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}
GPU_PEAK_FP32 = {"H200": 67e12, "H100": 67e12, "A100": 19.5e12, "L40S": 91.6e12, "A10": 31.2e12, "L4": 30.3e12}
BISECTION_PROBES = 8


@dataclass
class Passes:
    """Token passes of one phase: forward tokens (2·N FLOPs each) and backward tokens (4·N each)."""

    forward: float = 0.0
    backward: float = 0.0

    def flops(self, n_params: int) -> float:
        return 2.0 * n_params * self.forward + 4.0 * n_params * self.backward


@dataclass
class Row:
    kind: str
    run_id: str
    label: str
    seed: int
    state: str
    flops: float | None
    bf16: bool = False  # computes in 16 bits (a 16-bit dtype, or bf16 autocast): the GPU's bf16 peak applies


def tokens_per_example(model: str, examples: list) -> float:
    """Mean tokens of prompt + completion: the model's tokenizer where it is here, else characters / 4."""
    from harness.run import models

    texts = [ex.prompt + ex.completion for ex in examples] or [""]
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(models.resolve(model))
        return statistics.fmean(len(tok(t)["input_ids"]) + 1 for t in texts)
    except (OSError, ValueError, UnlearnBenchError):  # a hub model not on this machine: an approximation will do
        return statistics.fmean(len(t) / 4 + 1 for t in texts)


def parameters(model: str) -> int | None:
    """The model's parameter count from its config (built on the meta device), or None where the config is
    not on this machine."""
    from transformers import AutoConfig

    from harness.learn import memory
    from harness.run import models

    try:
        return memory.shape_of(AutoConfig.from_pretrained(models.resolve(model)))[0]
    except (OSError, ValueError, UnlearnBenchError):  # not on this machine: no estimate
        return None


def run_passes(spec, task, registry, tokens: float, steps: int) -> dict[str, Passes]:
    """The token passes of one run, phase by phase."""
    n_forget = len(task.forget_examples())
    out = {}
    if registry.get("attribution", spec.attribution).cls.needs_data:
        out["attribution"] = Passes(2 * n_forget * tokens, 2 * n_forget * tokens)
    per_step = spec.train.batch_size * spec.train.grad_accum * 2 * tokens  # a forget and a retain example each
    reference = 0.5 * per_step if registry.get("objective", spec.objective).cls.needs_reference else 0.0
    out["unlearning"] = Passes(steps * (per_step + reference), steps * per_step)
    if spec.match.enabled:
        sets = task.probe_sets()
        compared = sets.utility if spec.evaluate else {"validation": sets.validation}  # test runs: utility
        parts = {"forget": sets.forget, **compared}

        def size(names) -> int:  # the examples of these sets and their wrong alternatives
            return sum(len(parts[k]) + sum(len(a) for a in sets.alternatives.get(k, ())) for k in names)

        checks = math.ceil(steps / spec.match.check_every)  # a budget ending between checks: one more there
        bisection = BISECTION_PROBES * size(["forget"]) + size(parts) if spec.match.bisect else 0
        out["probes"] = Passes(tokens * (checks * size(parts) + bisection))
    if spec.evaluate and spec.full_evaluation:
        sequences, generated = task.evaluation_size()
        out["evaluation"] = Passes(sequences * tokens + generated)
    return out


def budget(spec, n_forget: int) -> int:
    """The unlearning steps the run's settings allow."""
    micro = spec.train.epochs * math.ceil(n_forget / spec.train.batch_size)
    steps = math.ceil(micro / spec.train.grad_accum)
    return steps if spec.train.max_steps is None else min(steps, spec.train.max_steps)


def matched_steps(found: list[dict[str, Any]]) -> dict[MethodKey, int]:
    """Per method (without its config digest), the median step at which its finished tuning runs reached
    the level."""
    steps: dict[MethodKey, list[float]] = {}
    for r in found:
        step = ((r.get("metrics") or {}).get("match_step") or {}).get("value")
        if r.get("kind") == "tune" and r.get("status") == "finished" and step is not None:
            steps.setdefault(MethodKey.of(r["spec"], digest=False), []).append(step)
    return {k: round(statistics.median(v)) for k, v in steps.items()}


def rows(cfg, results_dir: Path) -> list[Row]:
    """Every run of the sweep (tuning first, then test runs at the base rate until tuning has chosen), with
    its state and estimated FLOPs (None where the model's size is not known here)."""
    from harness.config import to_dict
    from harness.plugins import get_registry
    from harness.sweeps import sweep

    registry = get_registry()
    found = [r.to_json() for r in records.read_all(results_dir)] if (results_dir / "runs").is_dir() else []
    tuned = matched_steps(found)
    out = []
    for one in sweep.grids(cfg):
        task = registry.build("task", one.task, one.task_config, "plan: task_config")
        tokens, n = tokens_per_example(one.model, task.forget_examples()), parameters(one.model)
        tuning, tests = runs_of(one, results_dir)
        specs = [("tune", s) for s in tuning] + [("test", s) for s in tests]
        for kind, spec in specs:
            key = MethodKey.of(to_dict(spec), digest=False)
            steps = tuned.get(key) if spec.match.enabled and key in tuned else budget(spec, len(task.forget_examples()))
            passes = run_passes(spec, task, registry, tokens, steps)
            flops = None if n is None else sum(p.flops(n) for p in passes.values())
            state = {"finished": "done", "failed": "failed"}.get(sweep.status(results_dir, spec.run_id()), "pending")
            bf16 = spec.dtype != "float32" or spec.train.bf16_autocast is not False
            out.append(Row(kind, spec.run_id(), key.label, spec.seed, state, flops, bf16))
    return out


def runs_of(cfg, results_dir: Path) -> tuple[list, list]:
    """The runs the sweep will make, as it would make them: its tuning runs with the extension their records
    call for, and its test runs, at each method's chosen rate where its tuning records have chosen one,
    otherwise at the base rate (none for a method whose tuning failed)."""
    from harness.config import to_dict
    from harness.sweeps import sweep

    if not cfg.tune.enabled:
        return [], sweep.expand(cfg)
    grid = sweep.tuning_grid(cfg)
    more = sweep.extension(cfg, results_dir, grid)
    grid = {m: runs + more.get(m, []) for m, runs in grid.items()}
    chosen, missing = sweep.tuned_specs(cfg, results_dir, grid)
    decided = {MethodKey.of(to_dict(s), digest=False) for s in chosen} | {
        m for m, (outcome, _) in missing.items() if outcome == "failed"}  # tuning failed: no test runs
    tests = chosen + [s for s in sweep.expand(cfg) if MethodKey.of(to_dict(s), digest=False) not in decided]
    return [s for runs in grid.values() for s in runs], tests


def matmul_flops(dtype=None, n: int = 1024, repeats: int = 5, device: str = "cpu", trials: int = 1) -> float:
    """Measured FLOP/s of an n×n by n×n matrix product in `dtype` (default float32) on `device`: `repeats`
    products timed together, the fastest of `trials` such timings (other work on the machine only slows a
    timing down, so the fastest is the machine's own rate)."""
    import time

    import torch

    a, b = (torch.randn(n, n, dtype=dtype or torch.float32, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    a @ b
    sync()
    best = math.inf
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


def machine_rate() -> float:
    """This machine's FLOP/s for the harness's passes: its fp32 matmul rate × CPU_EFFICIENCY (or, with a
    CUDA device, its bf16 peak × GPU_EFFICIENCY)."""
    import torch

    if torch.cuda.is_available():
        return gpu_rate(torch.cuda.get_device_name())
    return matmul_flops(trials=7) * CPU_EFFICIENCY


def gpu_rate(name: str, bf16: bool = True) -> float:
    """The GPU's dense bf16 (or, for fp32 runs, its fp32: no TF32, torch's default for matmuls) peak ×
    GPU_EFFICIENCY."""
    key = next((k for k in GPU_PEAK if k in name.upper()), None)
    if key is None:
        raise ValueError(f"no peak known for the GPU {name!r}: choose one of {', '.join(GPU_PEAK)}")
    return (GPU_PEAK if bf16 else GPU_PEAK_FP32)[key] * GPU_EFFICIENCY


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 1:
        return "< 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def text(found: list[Row], here: float, gpu: str = "H100") -> str:
    """The plan as a table, then the totals of what is pending."""
    def on_gpu(r: Row) -> float:
        return r.flops / gpu_rate(gpu, r.bf16)

    lines = [f"{'#':>3}  {'kind':4}  {'state':7}  {'est. here':>9}  {'on ' + gpu:>9}  run"]
    for i, r in enumerate(found, start=1):
        est = (None, None) if r.flops is None else (r.flops / here, on_gpu(r))
        lines.append(f"{i:>3}  {r.kind:4}  {r.state:7}  {duration(est[0]):>9}  {duration(est[1]):>9}  "
                     f"{r.label}, seed {r.seed} ({r.run_id})")
    pending = [r for r in found if r.state == "pending"]
    known = [r for r in pending if r.flops is not None]
    states = {s: sum(r.state == s for r in found) for s in ("done", "failed", "pending")}
    lines.append(f"{len(found)} runs: {states['done']} done, {states['failed']} failed, {states['pending']} pending; "
                 f"pending ≈ {duration(sum(r.flops for r in known) / here)} here, "
                 f"≈ {duration(sum(on_gpu(r) for r in known))} on one {gpu} "
                 f"(FLOPs at {here / 1e9:.0f} GFLOP/s here, measured now: work already running here lowers it; "
                 f"{gpu}: its dense bf16 peak, or fp32 for fp32 runs, × {GPU_EFFICIENCY:g}, assumed)"
                 + ("" if len(known) == len(pending) else f"; {len(pending) - len(known)} runs not estimated "
                                                          "(their model's config is not on this machine)"))
    return "\n".join(lines)
