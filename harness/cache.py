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

from harness.io import shared_mode

CACHE_ENV = "UNLEARN_BENCH_CACHE"


def cache_root() -> Path:
    """$UNLEARN_BENCH_CACHE, else ~/.cache/unlearn-bench."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "unlearn-bench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def portable(path: str | Path) -> str:
    """A model path as it reads on any machine: relative to the cache root where it lies inside it (prepared
    models), else as given (a hub id or the user's own folder)."""
    try:
        return Path(path).resolve().relative_to(cache_root().resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of plain data, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


COMPLETE = ".complete"  # written last in every entry, after its files reached the disk: only then is it a hit


def _sync_tree(root: Path) -> None:
    """fsync every file under `root`, then every folder (so a crash cannot leave a renamed, truncated entry)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def complete(path: Path) -> bool:
    """Whether a cache entry was published whole (COMPLETE), not a folder left by a crash or an older harness."""
    return (path / COMPLETE).is_file()


def _publish(tmp: Path, final: Path) -> None:
    """Rename the built entry into place, moving aside an incomplete one that holds the name."""
    (tmp / COMPLETE).write_text("")
    _sync_tree(tmp)
    if final.is_dir() and not complete(final):
        stale = final.with_name(f".stale.{final.name}.{os.getpid()}")
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:  # another process published it first
        if not complete(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return cache folder `kind/key`, building it with `build(tmp)` first if absent.

    The folder is built under a temporary name, synced to disk, marked COMPLETE and renamed into place, so an
    interrupted build never leaves an entry that counts as a hit. Returns (path, hit). Under a multi-process
    launch the main process's view decides, so all processes build together (builds may be collective:
    attribution, fine-tuning), and only the main process's folder is published: other processes may write
    partial folders (transformers' save_pretrained writes weights on rank 0 only), which are discarded.
    """
    from harness import distributed

    final = cache_root() / kind / key
    if distributed.broadcast(complete(final)):
        return final, True
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        os.chmod(tmp, shared_mode(0o777))
        build(tmp)
        if not distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            distributed.barrier()  # the main process's folder is in place after this
            return final, False
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    distributed.barrier()
    return final, False
