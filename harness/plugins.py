"""The plugin manager and the registry of components.

Built-in plugin modules and third-party ones go through the same door: each module implements the hooks in
`harness.hookspecs`. Third-party plugins are found through the entry-point group `unlearn_bench`. The
environment variable UNLEARN_BENCH_LOAD_PLUGINS, when set, is a comma-separated allowlist of distribution
names whose entry points load (empty: none); the test suite sets it so a developer's plugins never leak in.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import pluggy

from harness import __version__, hookspecs
from harness.errors import UnknownPluginError, UnlearnBenchError

PROJECT = "unlearn_bench"
ALLOWLIST_ENV = "UNLEARN_BENCH_LOAD_PLUGINS"
DEFAULT_PLUGINS = (
    "methods.dense",
    "methods.random_mask",
    "methods.magnitude",
    "methods.saliency",
    "methods.wanda",
    "methods.lora",
    "methods.wagle",
    "methods.ascent",
    "methods.graddiff",
    "methods.npo",
    "methods.simnpo",
    "methods.po",
    "methods.rmu",
    "harness.backends",
    "harness.executors",
    "tasks.tofu",
    "tasks.muse",
    "tasks.books",
    "tasks.wmdp",
)
KINDS = {"attribution": "register_attributions", "objective": "register_objectives", "task": "register_tasks",
         "backend": "register_generation_backends", "executor": "register_executors"}


@dataclass(frozen=True)
class Entry:
    """One registered component: its class and who registered it."""

    kind: str
    name: str
    cls: type
    plugin: str
    distribution: str
    version: str


class DuplicatePluginError(UnlearnBenchError):
    pass


def _allowed_distributions() -> set[str] | None:
    raw = os.environ.get(ALLOWLIST_ENV)
    if raw is None:
        return None
    return {name.strip().lower().replace("_", "-") for name in raw.split(",") if name.strip()}


def make_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, tuple[str, str]]]:
    """Build the manager: built-ins first, then entry points. Returns it and plugin -> (dist, version)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    origin: dict[str, tuple[str, str]] = {}
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        origin[module_name] = ("unlearn-bench", __version__)
    allowed = _allowed_distributions()
    for ep in importlib.metadata.entry_points(group=PROJECT):
        dist_name = ep.dist.name if ep.dist else "?"
        if allowed is not None and dist_name.lower().replace("_", "-") not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        pm.register(ep.load(), name=ep.name)
        origin[ep.name] = (dist_name, ep.dist.version if ep.dist else "?")
    pm.check_pending()
    return pm, origin


class Registry:
    """Name -> component class for each kind, built by calling every plugin's register hooks."""

    def __init__(self, pm: pluggy.PluginManager, origin: dict[str, tuple[str, str]]) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                dist, version = origin.get(impl.plugin_name, ("?", "?"))
                impl.function(register=functools.partial(self._add, kind, impl.plugin_name, dist, version))

    def _add(self, kind: str, plugin: str, dist: str, version: str, cls: type) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise UnlearnBenchError(f"plugin {plugin!r} registered a {kind} class {cls!r} without a `name`")
        if not hasattr(cls, "Config"):
            raise UnlearnBenchError(f"plugin {plugin!r}: {kind} {name!r} has no `Config` dataclass")
        existing = self.entries[kind].get(name)
        if existing is not None:
            raise DuplicatePluginError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                f"({existing.distribution}) and by plugin {plugin!r} ({dist})")
        self.entries[kind][name] = Entry(kind, name, cls, plugin, dist, version)

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownPluginError(kind, name, list(self.entries[kind])) from None

    def build(self, kind: str, name: str, config: dict[str, Any] | None = None, where: str = "") -> Any:
        """Instantiate component `name` with its typed config built from `config`."""
        from harness.config import from_dict

        entry = self.get(kind, name)
        cfg = from_dict(entry.cls.Config, config, where or f"{kind} {name!r} config")
        return entry.cls(cfg)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    return Registry(*make_plugin_manager())


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin or changing the allowlist)."""
    get_registry.cache_clear()
