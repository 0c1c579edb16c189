import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.measure import mask_report


def test_density_and_jaccard_by_hand():
    a = {"model.layers.0.self_attn.q_proj.weight": torch.tensor([[True, False], [True, True]]),
         "model.layers.1.mlp.down_proj.weight": torch.tensor([False, False, True, True]),
         "model.embed_tokens.weight": torch.tensor([True, False])}
    b = {"model.layers.0.self_attn.q_proj.weight": torch.tensor([[True, True], [False, False]]),
         "model.layers.1.mlp.down_proj.weight": torch.tensor([False, False, False, True]),
         "model.embed_tokens.weight": torch.tensor([True, True])}
    by_type = mask_report.density_by(a, mask_report.module_type)
    assert by_type == {"q": 0.75, "down": 0.5, "embedding": 0.5}
    by_layer = mask_report.density_by({n: m for n, m in a.items() if mask_report.layer_of(n) is not None},
                                      mask_report.layer_of)
    assert by_layer == {0: 0.75, 1: 0.5}
    # A ∩ B = 1 + 1 + 1 = 3; A ∪ B = 4 + 2 + 2 = 8
    assert mask_report.jaccard(a, b) == pytest.approx(3 / 8)
    assert mask_report.jaccard(a, a) == 1.0
    text = mask_report.report([("a", a), ("b", b)])
    assert "a vs b: 0.3750" in text


def test_mask_cli_and_report_with_plot(tmp_path, capsys):
    from harness import cli

    common = ["--task", "tofu-mini", "--model", "tiny-llama", "--ratio", "0.3", "--spec", str(_spec(tmp_path))]
    # through the installed command, output piped, INFO logging on: no progress bars, no third-party log noise
    out = subprocess.run([str(Path(sys.executable).parent / "unlearn-bench"), "mask", "--attribution", "wagle",
                          *common], capture_output=True, text=True, timeout=300, check=True)
    assert "it/s]" not in out.stderr and "absl" not in out.stderr, out.stderr[-2000:]
    assert "density 0.3000" in out.stdout
    folders = [out.stdout.split(" (density")[0].strip()]
    assert cli.main(["-q", "mask", "--attribution", "magnitude", *common]) == 0
    printed = capsys.readouterr().out
    assert "density 0.3000" in printed
    folders.append(printed.split(" (density")[0].strip())
    png = tmp_path / "density.png"
    assert cli.main(["-q", "mask-report", *folders, "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "density per module type" in printed and "pairwise Jaccard overlap" in printed
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_a_piped_command_disables_progress_bars_before_torch_loads_tqdm():
    # tqdm reads TQDM_DISABLE once, when first imported, and torch imports it: the CLI must set it before torch
    # loads (the embedded model's GGUF conversion printed its bar into piped logs)
    script = ("from harness import cli; cli.main(['-q', 'list']); from tqdm.auto import tqdm; "
              "print('disabled', tqdm(range(2)).disable)")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         check=True)
    assert out.stdout.splitlines()[-1] == "disabled True", out.stdout[-500:]


def _spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("prepare: {epochs: 1}\ntask_config: {retain_authors: 1}\n")
    return path
