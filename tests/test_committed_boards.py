"""Every committed leaderboard that has committed records (leaderboards/<board>/ and its records/runs)
regenerates from them byte for byte, so anyone can audit or re-aggregate a board without rerunning it."""

from __future__ import annotations

from pathlib import Path

import pytest

from leaderboard import table

ROOT = Path(__file__).resolve().parents[1]
BOARDS = sorted(p.parents[1].name for p in (ROOT / "leaderboards").glob("*/records/runs")
                if any(p.parents[1].glob("*.csv")))


def test_the_demo_board_has_its_records():
    assert "tofu-mini" in BOARDS  # the demo's board is committed with the records it was built from


@pytest.mark.parametrize("board", BOARDS)
def test_committed_board_regenerates_byte_for_byte(board, tmp_path):
    written = table.write_all(ROOT / "leaderboards" / board / "records", tmp_path / board)
    committed = ROOT / "leaderboards" / board
    assert sorted(p.name for p in written) == sorted(p.name for p in committed.iterdir() if p.is_file())
    for path in written:
        assert path.read_bytes() == (committed / path.name).read_bytes(), f"{board}/{path.name} differs"
