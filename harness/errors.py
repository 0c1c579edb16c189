"""Exceptions raised by the harness. Every user-facing failure is one of these, with a message that says
what was wrong and where (file, field, plugin name)."""

from __future__ import annotations

import difflib


class UnlearnBenchError(Exception):
    """Base class of every error the harness raises on purpose."""


class ConfigError(UnlearnBenchError):
    """A configuration (YAML file, run spec, plugin config) is malformed."""


class DataError(UnlearnBenchError):
    """A data file is missing or malformed."""


class ModelNotFoundError(UnlearnBenchError):
    """A model argument is neither a local folder, a known alias, nor a loadable hub id."""


class NonFiniteLossError(UnlearnBenchError):
    """A training loss became NaN or infinite."""


class UnknownPluginError(UnlearnBenchError):
    """A plugin name (attribution, objective, task, ...) is not registered."""

    def __init__(self, kind: str, name: str, known: list[str], broken: list[str] | None = None) -> None:
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        skipped = "".join(f"; skipped as broken: {why}" for why in broken or [])
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(known)) or '(none)'}"
                         f"{skipped}")
        self.kind, self.name, self.known = kind, name, known


class NoUnlearningError(UnlearnBenchError):
    """A run that cannot have unlearned: nothing to forget, no retain set for a retain term, no weight moved."""


class UnsafeNameError(UnlearnBenchError):
    """A name that would become a file name outside its folder, or a hidden one."""
