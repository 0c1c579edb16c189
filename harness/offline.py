"""Offline unless asked: the harness reaches the Hugging Face hub only with `--online` (or
UNLEARN_BENCH_ONLINE=1). The command line sets the hub's offline variables before anything imports
huggingface_hub (which reads them once, at import), and a model string that is neither a folder, an alias
nor in the local hub cache is an error naming the closest matches, never a silent download."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

ONLINE_ENV = "UNLEARN_BENCH_ONLINE"
HUB_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def online() -> bool:
    """Whether hub access was asked for."""
    return os.environ.get(ONLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def configure(ask_online: bool = False) -> None:
    """Set the hub variables for this process and its workers: offline unless asked (an explicit
    HF_HUB_OFFLINE=0 in the environment counts as asking for the hub only with UNLEARN_BENCH_ONLINE)."""
    if ask_online:
        os.environ[ONLINE_ENV] = "1"
    for name in HUB_VARIABLES:
        if online():
            os.environ[name] = "0"
        else:
            os.environ[name] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cached_repos() -> list[str]:
    """Model repositories in the local hub cache (`owner/name`)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE)
    return sorted(p.name[len("models--"):].replace("--", "/") for p in root.glob("models--*")) if root.is_dir() else []


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local hub cache holds the repository's config (`repo@revision`, default main)."""
    return cached_revision(repo_id) is not None


def cached_revision(repo_id: str) -> str | None:
    """The commit the local hub cache resolves `repo_id` (its main branch, or `repo@revision`) to, if cached."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    try:
        found = try_to_load_from_cache(repo, "config.json", revision=revision or None)
    except ValueError:
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def closest(name: str, aliases: list[str]) -> list[str]:
    """The aliases, cached repositories and sibling folders nearest to `name`."""
    parent = Path(name).expanduser().parent
    siblings = [str(parent / p.name) if str(parent) != "." else p.name
                for p in (parent.iterdir() if parent.is_dir() else []) if p.is_dir()]
    return difflib.get_close_matches(name, [*aliases, *cached_repos(), *siblings], n=3, cutoff=0.6)
