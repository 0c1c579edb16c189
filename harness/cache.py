"""The cache directory and content-keyed, atomically published cache entries."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "UNLEARN_BENCH_CACHE"


def cache_root() -> Path:
    """$UNLEARN_BENCH_CACHE, else ~/.cache/unlearn-bench."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "unlearn-bench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of plain data, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return cache folder `kind/key`, building it with `build(tmp)` first if absent.

    The folder is built under a temporary name and renamed into place, so an interrupted build never
    leaves a half-written entry. Returns (path, hit). Under a multi-process launch the main process's view
    decides, so all processes build together (builds may be collective: attribution, fine-tuning), and only
    the main process's folder is published: other processes may write partial folders (transformers'
    save_pretrained writes weights on rank 0 only), which are discarded.
    """
    from harness import distributed

    final = cache_root() / kind / key
    if distributed.broadcast(final.is_dir()):
        return final, True
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        build(tmp)
        if not distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            distributed.barrier()  # the main process's folder is in place after this
            return final, False
        try:
            os.rename(tmp, final)
        except OSError:  # another process published it first
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    distributed.barrier()
    return final, False
