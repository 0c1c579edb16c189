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


@pytest.mark.parametrize("board", BOARDS)
def test_committed_board_headline_fits_a_laptop_screen(board, chromium):
    """Each committed board's page opens on its headline table, readable at 1366 pixels without scrolling
    sideways (the synthetic board's widest cells: tests/test_leaderboard.py)."""
    from selenium.webdriver.common.by import By

    chromium.set_window_size(1366, 768)
    chromium.get((ROOT / "leaderboards" / board / "index.html").as_uri())
    width = chromium.execute_script("return document.documentElement.clientWidth")
    assert chromium.find_element(By.CSS_SELECTOR, "table.headline").size["width"] <= width
    assert chromium.execute_script("return document.documentElement.scrollWidth") <= width
