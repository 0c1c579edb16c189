"""Run records: one JSON file per run, written atomically, with provenance."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from harness.io import atomic_write_json

RECORD_VERSION = 1
SUPERSEDED = "superseded"  # folder beside runs/ where records of an older version of a run go

log = logging.getLogger(__name__)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(plugins: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "packages": {d: _version(d) for d in ("unlearn-bench", "torch", "transformers", "lm-eval", "pluggy")},
        "plugins": plugins or {},
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hardware": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }


def peak_memory_mb() -> dict[str, float]:
    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def write(results_dir: Path, record_id: str, record: dict[str, Any]) -> Path:
    path = Path(results_dir) / "runs" / f"{record_id}.json"
    atomic_write_json(path, dict(record, record_version=RECORD_VERSION, id=record_id))
    return path


def same_spec(results_dir: Path, spec_key: str, run_id: str) -> list[dict[str, Any]]:
    """Records in results_dir/runs of the same spec under another run id: made by other plugin code."""
    out = []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        if path.stem == run_id:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("spec_key") == spec_key:
            out.append(record)
    return out


def what_changed(old: dict[str, Any], plugins: dict[str, dict[str, str]]) -> str:
    """Which plugins' version or code differ between an older record and the current fingerprints."""
    before = old.get("provenance", {}).get("plugins", {})
    changes = [f"{role} {now['name']!r} {key} {before.get(role, {}).get(key)} -> {now[key]}"
               for role, now in plugins.items() for key in ("version", "code")
               if before.get(role, {}).get(key) != now[key]]
    return "; ".join(changes) or "the harness changed"


def supersede(results_dir: Path, spec_key: str, run_id: str) -> None:
    """Move the records of the same spec under other run ids to results_dir/superseded (kept, not shown)."""
    for old in same_spec(results_dir, spec_key, run_id):
        source = Path(results_dir) / "runs" / f"{old['id']}.json"
        target = Path(results_dir) / SUPERSEDED / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        log.warning("record %s is superseded by %s: moved to %s", old["id"], run_id, target)
