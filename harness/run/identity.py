"""What a run is: its spec resolved (component configs with their defaults) plus the code of the plugins
it uses. Run ids and mask cache keys hash this, so a plugin whose code, version or defaults change gets a
new mask and a new run id, and nothing earlier is reused or overwritten by mistake.

A plugin's code digest is the hash of its module's syntax tree without docstrings and imports: editing a
comment, a docstring or where a module lives keeps results (run ids leave out which module registered a
component, and CORE's digest keys each module by its own name), editing a statement, a string or a default
does not (a module that spells its own path in a string changes with a move). The
harness's own code that a run's numbers depend on (CORE: the training loop, masks, losses, scoring, metrics,
matching, the model loading and fine-tuning, ...) has one digest too, in every run id, cache key and record:
a fix there reruns what it touched and never mixes with records made before it. The command line, sweeps,
records and the leaderboard (OUTSIDE) are not in it: they do not change a number.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cache import stable_hash
from harness.config import from_dict, to_dict
from harness.run.method import keyed

if TYPE_CHECKING:
    from harness.plugins import Entry, Registry
    from harness.run.spec import RunSpec

# spec field -> (plugin kind, field naming the component, field holding its config)
COMPONENTS = {"task": ("task", "task", "task_config"), "attribution": ("attribution", "attribution",
              "attribution_config"), "objective": ("objective", "objective", "objective_config"),
              "backend": ("backend", "generation", "generation_config"),
              "optimizer": ("optimizer", "optimizer", "optimizer_config")}


# Modules whose code decides a run's numbers, beside the plugins' own modules (digested per plugin).
CORE = ("harness.api", "harness.learn.adapters", "harness.learn.attribution", "harness.learn.data",
        "harness.learn.fsdp", "harness.learn.masks", "harness.learn.offset", "harness.learn.refusals",
        "harness.learn.settings", "harness.learn.spunge", "harness.learn.train", "harness.learn.update",
        "harness.measure.generation", "harness.measure.lm_eval_bridge", "harness.measure.match",
        "harness.measure.matcher", "harness.measure.metrics", "harness.measure.scoring", "harness.run.models",
        "harness.run.prepare", "harness.run.runner", "methods.losses", "tasks.text")
# Modules that do not change a number: interfaces to the user, bookkeeping, reporting.
OUTSIDE = ("harness", "harness.cache", "harness.cli", "harness.config", "harness.conformance", "harness.distributed",
           "harness.errors", "harness.hookspecs", "harness.io", "harness.offline", "harness.plugins",
           "harness.learn", "harness.learn.memory", "harness.learn.optim",
           "harness.measure", "harness.measure.backends", "harness.measure.mask_report", "harness.measure.probes",
           "harness.run", "harness.run.combine", "harness.run.evaluate", "harness.run.export", "harness.run.features",
           "harness.run.identity", "harness.run.method", "harness.run.records", "harness.run.spec",
           "harness.run.verify",
           "harness.sweeps", "harness.sweeps.executors", "harness.sweeps.plan", "harness.sweeps.progress",
           "harness.sweeps.rehearse", "harness.sweeps.sweep",
           "methods", "tasks")


def _strip(tree: ast.AST) -> ast.AST:
    """The tree without docstrings and imports (where a module lives is not what it computes)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        body = [n for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))]
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            body = body[1:]
        node.body = body or [ast.Pass()]
    return tree


@functools.cache
def code_digest(module_name: str) -> str:
    """Digest of a module's code (syntax tree; docstrings, comments and imports left out); "?" if it has no
    source."""
    module = sys.modules.get(module_name)
    try:
        if module is not None:
            source = inspect.getsource(module)
        else:  # not imported yet: read its file (importing CORE's modules would load lm-eval and more)
            spec = importlib.util.find_spec(module_name)
            source = Path(spec.origin).read_text() if spec is not None and spec.origin else None
    except (OSError, TypeError, ValueError, ImportError):
        source = None
    if source is None:
        return "?"
    tree = _strip(ast.parse(source))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


@functools.cache
def core_digest() -> str:
    """One digest over CORE's modules: the harness code a run's numbers depend on. Keyed by each module's own
    name, not its package, so moving a module keeps results, as it does for a plugin's digest."""
    return stable_hash({name.rsplit(".", 1)[-1]: code_digest(name) for name in CORE}, 16)


def fingerprint(entry: Entry) -> dict[str, str]:
    """Who provides a component and which code: name, plugin, distribution, version, code digest."""
    return {"name": entry.name, "plugin": entry.plugin, "distribution": entry.distribution,
            "version": entry.version, "code": code_digest(entry.cls.__module__)}


def keyed_fingerprint(entry: Entry) -> dict[str, str]:
    """The fingerprint as run ids and mask cache keys hash it: without the module that registered the component
    (the provenance keeps it; where a module lives is not what it computes)."""
    return {k: v for k, v in fingerprint(entry).items() if k != "plugin"}


def canonical(spec: RunSpec, registry: Registry) -> RunSpec:
    """The spec as keyed: the task's default objective filled in; methods without a mask run at ratio 1,
    whatever the grid said."""
    if spec.objective is None:
        spec = replace(spec, objective=registry.get("task", spec.task).cls.default_objective)
    if registry.get("attribution", spec.attribution).cls.ignores_ratio:
        return replace(spec, ratio=1.0)
    return spec


def resolved_config(registry: Registry, kind: str, name: str, config: dict[str, Any] | None,
                    where: str = "") -> dict[str, Any]:
    """A component's config as plain data with every default filled in (unknown keys are errors)."""
    cls = registry.get(kind, name).cls
    return to_dict(from_dict(cls.Config, config, where or f"{kind} {name!r} config"))


def resolved(spec: RunSpec, registry: Registry) -> dict[str, Any]:
    """The canonical spec as plain data, each component's config with its defaults."""
    spec = canonical(spec, registry)
    out = to_dict(spec)
    for kind, field_name, config_field in COMPONENTS.values():
        out[config_field] = resolved_config(registry, kind, out[field_name], out[config_field],
                                            f"{config_field} of {out[field_name]!r}")
    out["probe_config"] = {name: resolved_config(registry, "probe", name, out["probe_config"].get(name),
                                                 f"probe_config of {name!r}") for name in out["probes"]}
    return out


def plugins(spec: RunSpec, registry: Registry, of=fingerprint) -> dict[str, dict[str, str]]:
    """Fingerprints of the components a (canonical) spec uses, by role (`of`: fingerprint, or keyed_fingerprint
    as run ids hash them)."""
    out = {role: of(registry.get(kind, getattr(spec, field_name)))
           for role, (kind, field_name, _) in COMPONENTS.items()}
    return out | {f"probe:{name}": of(registry.get("probe", name)) for name in spec.probes}


def spec_key(spec: RunSpec, registry: Registry) -> str:
    """Hash of the resolved spec without the plugins' code: the same experiment across code changes."""
    return stable_hash(keyed(resolved(spec, registry)), 12)


def run_id(spec: RunSpec, registry: Registry) -> str:
    """`task-attribution-objective-hash`, the hash over the resolved spec, the plugins' fingerprints (without
    the module that registered each: the provenance keeps it, and where a module lives is not what it
    computes), the harness's core digest and the base model's version (its contents for a folder, its revision
    for a hub id: models.versioned); where it runs and how memory is spent do not count (harness/run/method.py)."""
    from harness.run import models

    spec = canonical(spec, registry)
    code = plugins(spec, registry, keyed_fingerprint)
    digest = stable_hash({"spec": keyed(resolved(spec, registry)), "plugins": code, "core": core_digest(),
                          "model": models.versioned(spec.model)}, 12)
    return f"{spec.task}-{spec.attribution}-{spec.objective}-{digest}"
