"""`sweep --rehearse`: a file's whole grid on a stand-in with every size cut, and every shipped experiment file
rehearsed on the tiny model, so a change that breaks a paper configuration fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sweeps import rehearse, sweep

ROOT = Path(__file__).resolve().parents[1]


def test_a_rehearsal_keeps_the_grid_and_cuts_the_sizes():
    cfg = sweep.load(ROOT / "experiments" / "wmdp-zephyr-rmu.yaml")
    (one,), notes = rehearse.rehearsal(cfg)
    assert (one.attributions, one.objectives, one.ratios) == (cfg.attributions, cfg.objectives, cfg.ratios)
    assert (one.model, one.dtype, one.device, one.rehearsal) == ("tiny-llama", "float32", "cpu", True)
    assert one.train.max_steps == 2 and one.train.order == "topics" and one.prepare.max_steps == 2
    assert one.task_config["forget_corpora"] == ["bundled:wmdp/forget.jsonl"] * 2  # one per RMU topic
    assert one.objective_config["rmu"]["layer"] == 1  # the stand-in's last of 2 layers (the file: 7)
    assert one.objective_config["rmu"]["steering_coeff"] == 6.5  # everything else as the file says
    assert any("zephyr-7b-beta -> tiny-llama" in n for n in notes)
    neighbours = sweep.load(ROOT / "experiments" / "neighbours-tofu-mini.yaml")
    cut, _ = rehearse.rehearsal(neighbours)
    assert len(cut) == len(sweep.grids(neighbours)) and all(c.seeds == [0] and c.tune.seeds == [1000] for c in cut)
    offset = next(c for c in cut if c.offset.enabled)
    assert offset.offset.small_model == "tiny-llama" and offset.offset.prepare["max_steps"] == 2


# Every shipped experiment file, the paper-scale ones included: about 70 s for all of them in `make test`.
SHIPPED = sorted(p.name for p in (ROOT / "experiments").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_experiment_file_rehearses(name, tmp_path):
    """Its whole grid on the tiny model: every run finishes, every record says rehearsal, and the rehearsal's
    own leaderboard builds."""
    from harness.cli import main
    from harness.run import records
    from leaderboard import table

    assert main(["sweep", str(ROOT / "experiments" / name), "--results", str(tmp_path), "--rehearse"]) == 0
    folder = tmp_path / f"rehearsal-{Path(name).stem}"
    runs = [r for r in records.read_all(folder) if r.kind in ("run", "tune")]
    assert runs and all(r.status == "finished" and r.spec["rehearsal"] for r in runs)
    assert table.write_all(folder, tmp_path / "board")
