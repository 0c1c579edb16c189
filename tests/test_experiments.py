"""Every shipped sweep file loads, expands to valid run specs, and builds every plugin config it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.plugins import get_registry
from harness.sweeps import sweep

EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_file_is_valid(path):
    specs = [s for grid in sweep.grids(sweep.load(path), str(path)) for s in sweep.expand(grid, str(path))]
    assert specs
    registry = get_registry()
    for spec in specs:
        registry.build("task", spec.task, spec.task_config, f"{path}: task_config")
        registry.build("attribution", spec.attribution, spec.attribution_config, f"{path}: attribution_config")
        registry.build("objective", spec.objective, spec.objective_config, f"{path}: objective_config")
        registry.build("optimizer", spec.optimizer, spec.optimizer_config, f"{path}: optimizer_config")
        for name in spec.probes:
            registry.build("probe", name, spec.probe_config.get(name), f"{path}: probe_config")
