"""Run records: one JSON file per run (`RESULTS/runs/<id>.json`), written atomically, with provenance.

`Record` is the one record type: the runner (kinds `run` and `tune`), the reference records (`reference`,
role target or retain) and `unlearn-bench eval` (`eval`) build one and `write` it; the sweep and the
leaderboard read them back with `read`, `read_all` and `find`, which also read version-1 files. The JSON
form is specified by docs/record.schema.json (checked against every record the test suite writes).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from harness.errors import UnlearnBenchError, UnsafeNameError
from harness.io import atomic_write_json, check_name, inside

RECORD_VERSION = 2  # 2: spec_key, resolved component configs, plugin code digests
READABLE_VERSIONS = (1, 2)
SUPERSEDED = "superseded"  # folder beside runs/ where records of an older version of a run go

log = logging.getLogger(__name__)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    here = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _core_digest() -> str:
    from harness.run.identity import core_digest

    return core_digest()


def _cpu_bf16() -> bool:
    from harness.learn.train import fast_bf16

    return fast_bf16(torch.device("cpu"))


def provenance(plugins: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "packages": {d: _version(d) for d in ("unlearn-bench", "torch", "transformers", "lm-eval", "pluggy")},
        "plugins": plugins or {},
        "core": _core_digest(),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hardware": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_kernels": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512, ...: which kernels ran
            "cpu_bf16": _cpu_bf16(),
        },
    }


def peak_memory_mb() -> dict[str, float]:
    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


@dataclass
class Record:
    """A run's record. Fields left None are not written."""

    kind: Literal["run", "tune", "reference", "eval"]
    spec: dict[str, Any]
    status: Literal["running", "finished", "failed"] = "running"
    id: str = ""
    spec_key: str | None = None  # runs: the resolved spec's hash without plugin code (harness/run/identity.py)
    role: str | None = None  # reference: target | retain; eval: eval
    model: str | None = None  # reference and eval: the model evaluated
    retain_model: str | None = None  # eval: the retain model its forget quality compares with
    models: dict[str, str | None] | None = None  # run: its target and retain models
    data: dict[str, str | None] | None = None  # run: content hashes of its forget, retain and refusal examples
    headline: dict[str, str] | None = None  # (forget, utility) metric names of the trade-off plot
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> value, direction, group
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    mask: dict[str, Any] | None = None
    curves: dict[str, list[dict[str, Any]]] | None = None
    match: dict[str, Any] | None = None
    probe: dict[str, float] | None = None  # reference: its matched-forgetting probe values
    probes: dict[str, Any] | None = None  # run: each post-unlearning probe's config, seconds and metric names
    spunge: dict[str, Any] | None = None  # run: SPUNGE's split, merge and its parts (forget size, steps, loss)
    lm_eval: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    samples: list[dict[str, Any]] | None = None
    error: dict[str, str] | None = None
    bf16_autocast: bool | None = None
    master_weights: bool | None = None  # run: whether unlearning kept fp32 master weights of a 16-bit model
    processes: int | None = None
    parallelism: str | None = None
    path: str | None = None  # eval: where the record was written
    saved_model: str | None = None  # run with save_model: the Hugging Face folder of the unlearned model
    kept_weights: str | None = None  # run with keep_weights: the safetensors file `export` reads
    record_version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Record:
        """A record from its JSON form (version 1 or 2); anything else raises RecordError naming `where`."""
        if not isinstance(data, dict) or "spec" not in data or "record_version" not in data:
            raise RecordError(f"{where}: not an unlearn-bench run record")
        version = data["record_version"]
        if version not in READABLE_VERSIONS:
            raise RecordError(f"{where}: record_version {version!r}; this version reads {READABLE_VERSIONS}")
        if version == 1:  # the earliest version-1 records of runs had no kind
            data = {"kind": "run", **data}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecordError(f"{where}: unknown record fields {unknown}")
        _check_fields(data, where)
        return cls(**data)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def value(self, metric: str) -> float | None:
        return (self.metrics.get(metric) or {}).get("value")


def _check_fields(data: dict[str, Any], where: str) -> None:
    """The fields a leaderboard turns into file names or numbers: safe names, numeric metric values."""
    spec = data["spec"] if isinstance(data["spec"], dict) else {}
    try:
        for field, value in (("id", data.get("id")), *((f, spec.get(f)) for f in ("task", "attribution", "objective"))):
            if value:
                check_name(value, field)
    except UnsafeNameError as exc:
        raise RecordError(f"{where}: {exc}") from None
    for name, metric in (data.get("metrics") or {}).items():
        value = metric.get("value") if isinstance(metric, dict) else metric
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RecordError(f"{where}: metric {name!r} has value {value!r}, not a number")


class RecordError(UnlearnBenchError):
    pass


class ReferenceChangedError(UnlearnBenchError):
    """A results folder's target or retain model scores otherwise here than its record says."""


REFERENCE_RTOL = 1e-4  # fp32 on another CPU's kernels moves a reference's probe far less (docs/metrics.md)


def _numbers(record: Record) -> dict[str, float | None]:
    """What identifies a reference model's scoring: its matched-forgetting probe, else its metrics (None for a
    value that is not a finite number)."""
    values = record.probe or {k: m.get("value") for k, m in record.metrics.items()}
    return {k: float(v) if isinstance(v, int | float) and math.isfinite(v) else None for k, v in values.items()}


def _differ(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return not math.isclose(a, b, rel_tol=REFERENCE_RTOL, abs_tol=1e-9)


def references(results_dir: Path) -> list[Record]:
    """The reference (target and retain) records of a results folder."""
    return [r for r in read_all(results_dir) if r.kind == "reference"]


def check_reference(results_dir: Path, new: Record, found: list[Record]) -> bool:
    """Whether `new` (a target or retain model's record) is to be written: False when the folder already holds
    a record of that role and spec which it reproduces (left as it is, with the provenance of the machine that
    made it); ReferenceChangedError when one it does not reproduce: the folder's runs started from that model or
    were measured against it, and a different one here (fine-tuned in bf16 where this CPU has it, say) would
    put two protocols in one board. Found among the folder's reference records (`found`, read once by the
    caller) by role and spec, not by file name, which holds the model's path."""
    spec = json.loads(json.dumps(new.spec))
    same = [r for r in found if r.role == new.role and r.spec == spec]
    for old in same:
        before, after = _numbers(old), _numbers(new)
        changed = [k for k in sorted(before.keys() & after.keys()) if _differ(before[k], after[k])]
        if changed or (before and not before.keys() & after.keys()):
            k = (changed or sorted(before))[0]
            made = old.provenance.get("hardware", {})
            where = (f"{old.provenance.get('platform')}, CPU kernels {made.get('cpu_kernels', 'unrecorded')}, bf16 "
                     f"instructions {made.get('cpu_bf16', 'unrecorded')}")
            raise ReferenceChangedError(
                f"{Path(results_dir) / 'runs' / old.id}.json: the {old.role} model prepared here is not the one this "
                f"folder's runs used: {k} {before[k]} in the record, {after.get(k)} here ({len(changed)} of "
                f"{len(before)} numbers differ; recorded on {where}). A model fine-tuned on another kind of machine "
                "is another model: resume where the records were made, bring that machine's prepared models "
                "($UNLEARN_BENCH_CACHE/prepared), or start a new results folder")
    return not same


def write(results_dir: Path, record_id: str, record: Record) -> Path:
    """Write `record` as RESULTS/runs/<record_id>.json, atomically, at the current version."""
    path = inside(Path(results_dir) / "runs", f"{check_name(record_id, 'record id')}.json")
    record.id, record.record_version = record_id, RECORD_VERSION
    atomic_write_json(path, record.to_json())
    return path


def read(path: Path) -> Record:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: not readable JSON ({exc})") from None
    return Record.from_json(data, str(path))


def find(results_dir: Path, run_id: str) -> Record | None:
    """The record of `run_id`, or None when it is missing or unreadable."""
    try:
        return read(Path(results_dir) / "runs" / f"{run_id}.json")
    except RecordError:
        return None


def read_all(results_dir: Path) -> list[Record]:
    """Every readable record under RESULTS/runs, by file name; others are skipped with a warning."""
    out = []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        try:
            out.append(read(path))
        except RecordError as exc:
            log.warning("skipping %s", exc)
    return out


TIMINGS = ("attribution_s", "unlearning_s", "evaluation_s")  # phase times a leaderboard reports as metrics


def with_timings(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A record's metrics (its JSON form), plus its phase timings as metrics `time_<phase>` of group "timing"."""
    out, timings = dict(record.get("metrics") or {}), record.get("timings") or {}
    out.update({f"time_{k}": {"value": timings[k], "direction": "lower", "group": "timing"}
                for k in TIMINGS if timings.get(k) is not None})
    return out


def tidy(records: list[dict[str, Any]]):
    """Records (their JSON form) as one tidy pandas DataFrame: a row per record and metric (its phase times as
    metrics `time_<phase>` of group "timing"), with the record's id, kind, role, status, task, model, seed and
    method (harness.run.method.MethodKey; None for reference models)."""
    import pandas as pd

    from harness.run.method import MethodKey

    rows = []
    for r in records:
        spec = r["spec"]
        key = MethodKey.of(spec) if r.get("kind") in ("run", "tune") else None
        common = {"id": r.get("id"), "kind": r.get("kind"), "role": r.get("role"), "status": r.get("status"),
                  "task": spec.get("task"), "model": spec.get("model"), "seed": spec.get("seed"), "method": key}
        for name, m in with_timings(r).items():
            rows.append({**common, "metric": name, "value": m.get("value"), "direction": m.get("direction", ""),
                         "group": m.get("group", "")})
    columns = ["id", "kind", "role", "status", "task", "model", "seed", "method", "metric", "value", "direction",
               "group"]
    return pd.DataFrame(rows, columns=columns)


def frame(results_dir: Path):
    """Every readable record of a results folder as one tidy DataFrame (`tidy`): for a notebook, e.g.
    `frame("results/demo").query("kind == 'run'").groupby(["method", "metric"]).value.mean()`."""
    return tidy([r.to_json() for r in read_all(results_dir)])


def same_spec(results_dir: Path, spec_key: str, run_id: str) -> list[Record]:
    """Records in results_dir/runs of the same spec under another run id: made by other plugin code."""
    return [r for r in read_all(results_dir) if r.spec_key == spec_key and r.id != run_id]


def what_changed(old: Record, plugins: dict[str, dict[str, str]]) -> str:
    """Which plugins' version or code differ between an older record and the current fingerprints."""
    before = old.provenance.get("plugins", {})
    changes = [f"{role} {now['name']!r} {key} {before.get(role, {}).get(key)} -> {now[key]}"
               for role, now in plugins.items() for key in ("version", "code")
               if before.get(role, {}).get(key) != now[key]]
    return "; ".join(changes) or "the harness changed"


def supersede(results_dir: Path, older: list[Record], run_id: str) -> None:
    """Move `older` records (`same_spec`'s, read when the run started) to results_dir/superseded (kept, not
    shown)."""
    for old in older:
        source = Path(results_dir) / "runs" / f"{old.id}.json"
        target = Path(results_dir) / SUPERSEDED / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:  # another sweep on this folder moved it first
            continue
        log.warning("record %s is superseded by %s: moved to %s", old.id, run_id, target)
