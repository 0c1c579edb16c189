"""The bad-input catalogue: each case gives a clear message through the command line (exit status 2 for a
refused input) and loses nothing. See docs/errors.md."""

from __future__ import annotations

import json

import pytest

from harness import cli


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert cli.main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_unknown_plugin_name_lists_known_and_suggests(capsys):
    _fails(capsys, ["run", "--task", "tofu-mini", "--model", "tiny-llama", "--attribution", "wagel"],
           "unknown attribution 'wagel'", "Did you mean 'wagle'?", "Known attributions: dense, gradient")
    _fails(capsys, ["eval", "tiny-llama", "--task", "tofu-mni"], "Did you mean 'tofu-mini'?")


def test_unknown_config_key_names_file_and_field(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("task: tofu-mini\ntrain: {lrr: 0.1}\n")
    _fails(capsys, ["run", "--spec", str(spec)], "spec.yaml", "lrr", "known keys")


def test_ratio_outside_unit_interval(capsys):
    _fails(capsys, ["run", "--task", "tofu-mini", "--attribution", "wagle", "--ratio", "1.5"],
           "ratio must be in (0, 1], got 1.5")


def test_missing_and_malformed_data_files_name_file_and_line(tmp_path, capsys):
    bad = tmp_path / "book.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    cfg = tmp_path / "task.yaml"
    cfg.write_text(f"forget_text: {bad}\nretain_text: {bad}\n")
    _fails(capsys, ["eval", "tiny-llama", "--task", "copyright-books", "--task-config", str(cfg)],
           "book.jsonl, line 2: not valid JSON")
    cfg.write_text(f"forget_text: {tmp_path / 'missing.txt'}\nretain_text: {bad}\n")
    _fails(capsys, ["eval", "tiny-llama", "--task", "copyright-books", "--task-config", str(cfg)],
           "corpus file not found", "missing.txt")


def test_missing_model_path(capsys):
    _fails(capsys, ["eval", "./no/such/model", "--task", "tofu-mini"], "model folder not found: ./no/such/model",
           "aliases: smollm2-135m, smollm2-offset, tiny-llama")


def test_records_dir_with_corrupt_and_foreign_files_still_builds(tmp_path, capsys, caplog):
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    (runs / "corrupt.json").write_text("{half")
    (runs / "foreign.json").write_text(json.dumps([1, 2]))
    assert cli.main(["-q", "leaderboard", str(tmp_path / "results"), "--out", str(tmp_path / "board")]) == 0
    assert (tmp_path / "board" / "index.html").is_file() and (tmp_path / "board" / "runs.csv").is_file()
    assert "skipping" in caplog.text and "corrupt.json" in caplog.text and "foreign.json" in caplog.text
    _fails(capsys, ["leaderboard", str(tmp_path / "nothing-here")], "no runs/ folder of records")


@pytest.mark.parametrize("kind", ["sweep file", "spec file"])
def test_missing_config_files(tmp_path, capsys, kind):
    argv = ["sweep", str(tmp_path / "x.yaml")] if kind == "sweep file" else ["run", "--spec", str(tmp_path / "x.yaml")]
    _fails(capsys, argv, f"{kind} not found", "x.yaml")
