"""The plugin manager and the registry of components.

Built-in plugin modules and third-party ones go through the same door: each module implements the hooks in
`harness.hookspecs`. Third-party plugins are found through the entry-point group `unlearn_bench`. The
environment variable UNLEARN_BENCH_LOAD_PLUGINS, when set, is a comma-separated allowlist of distribution
names whose entry points load (empty: none); the test suite sets it so a developer's plugins never leak in.

A third-party plugin that fails to import, implements a hook that does not exist (the nearest hook name is
suggested) or registers a class that breaks the contract (base class, `name`, `Config` with `option()`
fields, docstring) is skipped and reported (`Registry.broken`, shown by `unlearn-bench list` and in the
error for an unknown name): every other command keeps working. A broken built-in is a bug and raises.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from typing import Any

import pluggy

from harness import __version__, api, hookspecs
from harness.errors import UnknownPluginError, UnlearnBenchError
from harness.io import SAFE_NAME

log = logging.getLogger(__name__)

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
    "methods.salun",
    "methods.grin",
    "methods.eul",
    "methods.ascent",
    "methods.graddiff",
    "methods.npo",
    "methods.simnpo",
    "methods.po",
    "methods.random_label",
    "methods.rmu",
    "harness.measure.backends",
    "harness.learn.optim",
    "methods.soul",
    "harness.sweeps.executors",
    "tasks.tofu",
    "tasks.muse",
    "tasks.books",
    "tasks.wmdp",
    "harness.measure.probes.quantization",
    "harness.measure.probes.relearn",
    "harness.measure.probes.mia",
    "harness.measure.probes.extraction",
)
KINDS = {"attribution": "register_attributions", "objective": "register_objectives", "task": "register_tasks",
         "backend": "register_generation_backends", "executor": "register_executors", "probe": "register_probes",
         "optimizer": "register_optimizers"}
BASES: dict[str, type] = {"attribution": api.Attribution, "objective": api.Objective, "task": api.Task,
                          "backend": api.GenerationBackend, "executor": api.Executor, "probe": api.Probe,
                          "optimizer": api.Optimizer}


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


class PluginContractError(UnlearnBenchError):
    pass


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> str | None:
    """A message naming the hooks `plugin` implements that no spec declares, with the nearest real name."""
    problems = []
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            near = difflib.get_close_matches(caller.name, list(KINDS.values()), n=1)
            problems.append(f"unknown hook {caller.name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    return "; ".join(problems) or None


def make_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, tuple[str, str]], dict[str, str]]:
    """Build the manager: built-ins first, then entry points. Returns it, plugin -> (dist, version) and the
    third-party plugins skipped as broken (plugin -> why)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    origin: dict[str, tuple[str, str]] = {}
    broken: dict[str, str] = {}
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        origin[module_name] = ("unlearn-bench", __version__)
    pm.check_pending()
    allowed = _allowed_distributions()
    for ep in importlib.metadata.entry_points(group=PROJECT):
        dist_name = ep.dist.name if ep.dist else "?"
        if allowed is not None and dist_name.lower().replace("_", "-") not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        where = f"plugin {ep.name!r} ({dist_name})"
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # an import error or a hook with wrong arguments: skip this plugin only
            broken[ep.name] = f"{where} failed to load: {type(exc).__name__}: {exc}"
            if pm.get_plugin(ep.name) is not None:
                pm.unregister(name=ep.name)
            continue
        problem = _unknown_hooks(pm, module)
        if problem:
            broken[ep.name] = f"{where}: {problem}"
            pm.unregister(name=ep.name)
            continue
        origin[ep.name] = (dist_name, ep.dist.version if ep.dist else "?")
    for why in broken.values():
        log.warning("skipped %s", why)
    return pm, origin, broken


def check_class(kind: str, cls: Any) -> None:
    """The contract of a registered class: the kind's base class, a `name`, a docstring of its own, a `Config`
    dataclass whose fields all carry help text (made with `harness.config.option`)."""
    base = BASES[kind]
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise PluginContractError(f"{kind} {cls!r} is not a subclass of harness.api.{base.__name__}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginContractError(f"{kind} class {cls.__name__} has no `name`")
    if not SAFE_NAME.fullmatch(name):
        raise PluginContractError(f"{kind} name {name!r} ({cls.__name__}): a name may hold letters, digits and "
                                  ". _ + - only, starting with a letter or digit (it becomes part of file names)")
    if not (cls.__dict__.get("__doc__") or "").strip():
        raise PluginContractError(f"{kind} {name!r} ({cls.__name__}) has no docstring (`list` shows its first line)")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise PluginContractError(f"{kind} {name!r}: `Config` must be a dataclass, got {config!r}")
    bare = [f.name for f in dataclasses.fields(config) if not f.metadata.get("help")]
    if bare:
        raise PluginContractError(f"{kind} {name!r}: Config fields {bare} have no help text; declare them with "
                                  "harness.config.option(default, help)")
    if kind == "task":
        fields = {f.name for f in dataclasses.fields(config)}
        missing = [f for f in ("max_length", "eval_batch_size") if f not in fields]
        if missing:
            raise PluginContractError(f"task {name!r}: Config lacks {missing}; derive it from harness.api.TaskConfig")


class Registry:
    """Name -> component class for each kind, built by calling every plugin's register hooks."""

    def __init__(self, pm: pluggy.PluginManager, origin: dict[str, tuple[str, str]],
                 broken: dict[str, str] | None = None) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.broken: dict[str, str] = dict(broken or {})
        for kind, hook_name in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name in self.broken:
                    continue
                dist, version = origin.get(impl.plugin_name, ("?", "?"))
                added: list[Entry] = []
                try:
                    impl.function(register=functools.partial(self._register, added, kind, impl.plugin_name,
                                                             dist, version))
                except Exception as exc:
                    if dist == "unlearn-bench":
                        raise
                    self._skip(impl.plugin_name, f"plugin {impl.plugin_name!r} ({dist}): {exc}")
                    continue
                for entry in added:
                    self.entries[kind][entry.name] = entry

    def _skip(self, plugin: str, why: str) -> None:
        """Drop every component of a broken plugin and say why once."""
        self.broken[plugin] = why
        for entries in self.entries.values():
            for name in [n for n, e in entries.items() if e.plugin == plugin]:
                del entries[name]
        log.warning("skipped %s", why)

    def _register(self, added: list[Entry], kind: str, plugin: str, dist: str, version: str, cls: type) -> None:
        check_class(kind, cls)
        existing = self.entries[kind].get(cls.name) or next((e for e in added if e.name == cls.name), None)
        if existing is not None:
            raise DuplicatePluginError(
                f"{kind} {cls.name!r} is registered twice: by plugin {existing.plugin!r} "
                f"({existing.distribution}) and by plugin {plugin!r} ({dist})")
        added.append(Entry(kind, cls.name, cls, plugin, dist, version))

    def add(self, kind: str, cls: type, plugin: str = "runtime", distribution: str = "?", version: str = "?") -> Entry:
        """Register `cls` as a `kind` component directly (scripts, notebooks, tests), with the same checks as
        the hooks."""
        if kind not in KINDS:
            raise UnknownPluginError("plugin kind", kind, list(KINDS))
        added: list[Entry] = []
        self._register(added, kind, plugin, distribution, version, cls)
        self.entries[kind][cls.name] = added[0]
        return added[0]

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownPluginError(kind, name, list(self.entries[kind]), list(self.broken.values())) from None

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
    """Forget the cached registry and plugin code digests (after installing or editing a plugin, or changing
    the allowlist)."""
    from harness.run.identity import code_digest

    get_registry.cache_clear()
    code_digest.cache_clear()
