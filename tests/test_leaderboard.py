"""Leaderboard files from records alone: aggregation over seeds with t intervals (checked by formula),
the Pareto front, byte-identical regeneration, and the HTML page in a real headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from harness.run.method import MethodKey
from leaderboard import aggregate, plots, table


def _record(runs: Path, rid: str, *, seed: int = 0, attribution: str = "wagle", forget: float = 0.5,
            utility: float = 0.4, kind: str = "run", role: str | None = None, status: str = "finished") -> None:
    spec = {"task": "tofu-mini", "model": "m", "attribution": attribution, "ratio": 0.5, "objective": "npo",
            "seed": seed, "train": {"lr": 1e-5}}
    record = {"record_version": 1, "id": rid, "kind": kind, "spec": spec, "status": status,
              "headline": {"forget": "forget_rouge", "utility": "model_utility"},
              "metrics": {"forget_rouge": {"value": forget, "direction": "lower", "group": "forget"},
                          "model_utility": {"value": utility, "direction": "higher", "group": "utility"}},
              "mask": {"layer_module_density": {"0.q": 0.25, "0.v": 0.75, "1.q": 0.5, "1.down": 1.0}}}
    if role:
        record["role"] = role
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{rid}.json").write_text(json.dumps(record))


@pytest.fixture
def results(tmp_path) -> Path:
    runs = tmp_path / "results" / "runs"
    _record(runs, "target", kind="reference", role="target", forget=0.98, utility=0.45)
    _record(runs, "retain", kind="reference", role="retain", forget=0.33, utility=0.42)
    for seed, (f, u) in enumerate([(0.5, 0.40), (0.7, 0.44), (0.6, 0.42)]):
        _record(runs, f"wagle-{seed}", seed=seed, forget=f, utility=u)
    _record(runs, "dense-0", attribution="dense", forget=0.4, utility=0.30)
    _record(runs, "random-0", attribution="random", forget=0.8, utility=0.35)  # dominated by wagle's mean
    _record(runs, "broken-0", attribution="magnitude", status="failed")
    (runs / "corrupt.json").write_text("{half a rec")
    (runs / "foreign.json").write_text(json.dumps({"some": "other tool"}))
    return tmp_path / "results"


def test_interval_over_seeds_by_formula():
    # [0.5, 0.7, 0.6]: mean 0.6, s 0.1, t(0.975, 2) = 4.3027: 0.6 ± 4.3027 · 0.1 / √3
    low, high = aggregate.mean_ci([0.5, 0.7, 0.6])
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert (low, high) == pytest.approx((0.6 - half, 0.6 + half)) and half == pytest.approx(0.24841, abs=1e-5)
    assert aggregate.mean_ci([0.7]) == (0.7, 0.7)
    assert aggregate.mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_method_rows_aggregate_seeds(results):
    rows = aggregate.method_rows(table.read_records(results))
    by = {r["attribution"]: r for r in rows}
    assert set(by) == {"wagle", "dense", "random"}  # the failed run is not aggregated
    w = by["wagle"]
    assert w["n"] == 3 and w["seeds"] == "0 1 2"
    assert w["metrics"]["forget_rouge"]["mean"] == pytest.approx(0.6)
    assert (w["metrics"]["forget_rouge"]["ci_low"], w["metrics"]["forget_rouge"]["ci_high"]) == pytest.approx(
        (0.6 - 0.24841, 0.6 + 0.24841), abs=1e-5)


def test_pareto_front_respects_directions():
    # x lower is better, y higher is better: (0.4, 0.3) and (0.6, 0.42) trade off; (0.8, 0.35) is dominated
    points = [(0.4, 0.30), (0.6, 0.42), (0.8, 0.35)]
    assert plots.pareto_front(points, ("lower", "higher")) == [0, 1]
    assert plots.pareto_front(points, ("higher", "higher")) == [1, 2]


def test_write_all_is_a_pure_function_of_the_records(results, tmp_path):
    out = tmp_path / "board"
    files = table.write_all(results, out)
    names = sorted(p.name for p in files)
    assert names == ["index.html", "leaderboard.md", "masks-tofu-mini.png", "methods.csv", "paired.csv", "runs.csv",
                     "tradeoff-tofu-mini.png"]
    first = {p.name: p.read_bytes() for p in files}
    # records copied elsewhere, files rebuilt: byte-identical
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    again = table.write_all(copy, tmp_path / "board2")
    assert {p.name: p.read_bytes() for p in again} == first
    methods = list(csv.DictReader((out / "methods.csv").open()))
    assert [r["attribution"] for r in methods] == ["dense", "random", "wagle"]
    assert methods[2]["forget_rouge ↓ mean"] == "0.6" and methods[2]["n"] == "3"
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["kind"] for r in runs[:2]] == ["target", "retain"] and len(runs) == 8  # corrupt/foreign skipped
    md = (out / "leaderboard.md").read_text()
    assert "| wagle | 0.5 | npo | 1e-05 | 3 | 0.6 [" in md and "| target |" in md
    assert "### Matched forgetting" not in md  # no run of these ran matched forgetting
    assert (out / "tradeoff-tofu-mini.png").read_bytes()[:4] == b"\x89PNG"


def test_html_page_renders_sorts_and_shows_the_plot_in_chromium(results, tmp_path, chromium):
    from selenium.webdriver.common.by import By

    out = tmp_path / "board"
    table.write_all(results, out)
    driver = chromium
    driver.get((out / "index.html").as_uri())
    assert driver.title == "unlearn-bench leaderboard"
    assert driver.find_element(By.CSS_SELECTOR, "details[open] summary").text.startswith("Forgetting")
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    tables = driver.find_elements(By.CSS_SELECTOR, "section#task-tofu-mini table.sortable")
    assert "model_utility ↑" in [h.text for h in tables[1].find_elements(By.TAG_NAME, "th")]
    tbl = tables[0]  # forgetting
    headers = tbl.find_elements(By.TAG_NAME, "th")
    labels = [h.text for h in headers]
    assert "forget_rouge ↓" in labels
    assert headers[labels.index("forget_rouge ↓")].get_attribute("title") == "lower is better"

    def column(i):
        return [r.find_elements(By.TAG_NAME, "td")[i].text.split(" ")[0]
                for r in tbl.find_elements(By.CSS_SELECTOR, "tbody tr")]

    assert column(0) == ["target", "retain", "dense", "random", "wagle"]
    col = labels.index("forget_rouge ↓")
    headers[col].click()
    assert column(col) == ["0.33", "0.4", "0.6", "0.8", "0.98"]
    headers[col].click()
    assert column(col) == ["0.98", "0.8", "0.6", "0.4", "0.33"]
    for img in driver.find_elements(By.CSS_SELECTOR, "img.tradeoff, img.density"):
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
    shot = tmp_path / "page.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def _matched(runs: Path, rid: str, attribution: str, seed: int, utility: float | None, score: float) -> None:
    spec = {"task": "tofu-mini", "model": "m", "attribution": attribution, "ratio": 1.0 if attribution == "dense"
            else 0.5, "objective": "graddiff", "seed": seed, "train": {"lr": 1e-4},
            "tuned_from": [1e-4 / 3, 1e-4, 3e-4, 9e-4]}  # an extended grid: the widest headline cell
    metrics = {"forget_rouge": {"value": 0.3, "direction": "lower", "group": "forget"},
               "match_utility": {"value": utility, "direction": "higher", "group": "match"},
               "tradeoff_score": {"value": score, "direction": "higher", "group": "match"},
               "match_reached": {"value": float(utility is not None), "direction": "higher", "group": "info"},
               "match_forget": {"value": 0.09, "direction": "info", "group": "info"}}
    record = {"record_version": 1, "id": rid, "kind": "run", "spec": spec, "status": "finished",
              "headline": {"forget": "forget_rouge", "utility": "match_utility"}, "metrics": metrics,
              "timings": {"unlearning_s": 10.0 + seed}}
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{rid}.json").write_text(json.dumps(record))


@pytest.fixture
def matched_results(tmp_path) -> Path:
    runs = tmp_path / "matched" / "runs"
    _record(runs, "retain", kind="reference", role="retain", forget=0.33, utility=0.42)
    retain = json.loads((runs / "retain.json").read_text())
    retain["probe"] = {"forget": 0.1, "utility": 0.5}
    retain["metrics"]["tradeoff_score"] = {"value": 1.0, "direction": "higher", "group": "match"}
    (runs / "retain.json").write_text(json.dumps(retain))
    for seed in range(7):  # 7 pairs: the fewest with which a family of two can resolve (docs/metrics.md)
        _matched(runs, f"dense-{seed}", "dense", seed, 0.40 + 0.01 * seed, 0.70 + 0.01 * seed)
        _matched(runs, f"wagle-{seed}", "wagle", seed, 0.45 + 0.01 * seed,
                 0.70 + 0.01 * seed + [0.05, 0.06, 0.04, 0.05, 0.07, 0.05, 0.06][seed])
        _matched(runs, f"random-{seed}", "random", seed, None if seed == 2 else 0.30, 0.76 + 0.01 * seed
                 + [0.0, 0.002, -0.001, 0.001, -0.002, 0.0, 0.001][seed])
    return tmp_path / "matched"


def test_paired_differences_and_headline_by_hand(matched_results, tmp_path):
    table.write_all(matched_results, tmp_path / "board")
    pairs = {(p["attribution"], p["baseline"], p["metric"]): p
             for p in csv.DictReader((tmp_path / "board" / "paired.csv").open())}
    # wagle − dense trade-off: +0.04..+0.07 on all 7 seeds: exact p = 2/128, Bonferroni over the family of two (vs
    # dense, vs random) doubles it: resolved, higher
    t = pairs[("wagle", "dense", "tradeoff_score")]
    assert t["role"] == "primary" and t["family"] == "2" and float(t["mean"]) == pytest.approx(0.054286, abs=1e-6)
    assert float(t["p"]) == pytest.approx(2 / 128) and float(t["p_adj"]) == pytest.approx(4 / 128)
    assert t["verdict"] == "higher"
    # wagle − random: −0.006 ± 0.0014 on 7 seeds: equivalent within ±0.02 (TOST), not resolved
    r = pairs[("wagle", "random", "tradeoff_score")]
    assert r["verdict"] == "equivalent" and float(r["p_adj"]) > 0.05 > float(r["p_tost_adj"])
    # secondary metric: an interval, no verdict; a seed that never reached the level leaves the pairs
    u = pairs[("wagle", "dense", "match_utility")]
    assert u["role"] == "secondary" and u["verdict"] == "" and float(u["mean"]) == pytest.approx(0.05)
    ru = pairs[("random", "dense", "match_utility")]
    assert ru["n"] == "6" and ru["role"] == "secondary" and ru["verdict"] == ""  # random is a baseline itself
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert md.index("### Matched forgetting") < md.index("### Verdicts") < md.index("### All metrics")
    assert "| random (0.5) + graddiff | 0.0001 of {3.33e-05, 0.0001, 0.0003, 0.0009} | 6/7 ⚠ |" in md
    assert "docs/metrics.md. ⚠: some seeds never reached the level. Declared before the runs" in md
    assert ("- wagle (0.5) + graddiff vs dense, tradeoff_score: +0.0543 [+0.0453, +0.0633] resolved, higher "
            "(adjusted p 0.031) over 7 seed pairs") in md
    assert "- wagle (0.5) + graddiff vs random, tradeoff_score: " in md and "equivalent within ±0.02" in md


def test_a_board_where_every_seed_reached_the_level_has_no_warning(matched_results, tmp_path):
    (matched_results / "runs" / "random-2.json").unlink()  # the one seed that never reached it
    table.write_all(matched_results, tmp_path / "board")
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "| random (0.5) + graddiff | 0.0001 of {3.33e-05, 0.0001, 0.0003, 0.0009} | 6/6 |" in md
    assert "⚠" not in md and "⚠" not in (tmp_path / "board" / "index.html").read_text()
    assert "docs/metrics.md. Declared before the runs" in md


def test_the_headline_counts_seeds_evaluated_past_the_level(matched_results, tmp_path):
    for seed in range(7):  # wagle's seed 4 reached the level but was evaluated on the check that crossed it
        path = matched_results / "runs" / f"wagle-{seed}.json"
        record = json.loads(path.read_text())
        record["metrics"]["match_bisected"] = {"value": float(seed != 4), "direction": "higher", "group": "info"}
        path.write_text(json.dumps(record))
    table.write_all(matched_results, tmp_path / "board")
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "| wagle (0.5) + graddiff | 0.0001 of {3.33e-05, 0.0001, 0.0003, 0.0009} | 7/7, 1 past ⚠ |" in md
    assert "| dense (1) + graddiff | 0.0001 of {3.33e-05, 0.0001, 0.0003, 0.0009} | 7/7 |" in md  # no such metric
    assert ">7/7, 1 past ⚠</td>" in (tmp_path / "board" / "index.html").read_text()
    assert "⚠: some seeds never reached the level; past: seeds evaluated past it" in md
    from harness.measure.matcher import match_metrics

    summary = {"probe": "utility", "at_match": 0.4, "tradeoff": 0.9, "reached": True, "step": 6,
               "efficacy_at_stop": 1.3, "forget_at_stop": 0.1}
    assert match_metrics({**summary, "bisection": {"within": True}})["match_bisected"].value == 1.0
    assert match_metrics({**summary, "bisection": {"within": False}})["match_bisected"].value == 0.0
    assert match_metrics({**summary, "bisection": None})["match_bisected"].value == 0.0
    assert "match_bisected" not in match_metrics({**summary, "reached": False, "bisection": None})


def test_an_undecided_verdict_says_what_the_seeds_could_have_detected(matched_results, tmp_path):
    for seed in range(3, 7):
        for name in ("dense", "wagle", "random"):
            (matched_results / "runs" / f"{name}-{seed}.json").unlink()
    table.write_all(matched_results, tmp_path / "board")
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- wagle (0.5) + graddiff vs dense"))
    assert "undecided (p 0.5; detectable ≥ ∞" in line and "an exact test over a family of 2 needs ≥ 7 pairs" in line


def test_headline_fits_a_laptop_screen_and_highlights_resolved_differences(matched_results, tmp_path, chromium):
    from selenium.webdriver.common.by import By

    for seed in range(7):  # the widest "reached" cell: a seed that never reached, one evaluated past the level
        path = matched_results / "runs" / f"random-{seed}.json"
        record = json.loads(path.read_text())
        if seed != 2:
            record["metrics"]["match_bisected"] = {"value": float(seed != 5), "direction": "higher", "group": "info"}
        path.write_text(json.dumps(record))
    out = tmp_path / "board"
    table.write_all(matched_results, out)
    assert "| 6/7 ⚠, 1 past ⚠ |" in (out / "leaderboard.md").read_text()
    driver = chromium
    driver.set_window_size(1366, 768)
    driver.get((out / "index.html").as_uri())
    headline = driver.find_element(By.CSS_SELECTOR, "table.headline")
    first_table = driver.find_element(By.CSS_SELECTOR, "table")
    assert headline == first_table  # the headline comes before every other table
    width = driver.execute_script("return document.documentElement.clientWidth")
    assert headline.size["width"] <= width
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    labels = [h.text for h in headline.find_elements(By.TAG_NAME, "th")]
    assert labels[:3] == ["method", "lr", "reached"] and labels[-2:] == ["tradeoff_score vs dense",
                                                                         "tradeoff_score vs random"]
    wagle = next(r for r in headline.find_elements(By.CSS_SELECTOR, "tbody tr") if r.text.startswith("wagle"))
    cells = wagle.find_elements(By.TAG_NAME, "td")
    assert "better" in cells[-2].get_attribute("class") and "resolved ↑" in cells[-2].text
    assert "equivalent" in cells[-1].get_attribute("class") and "equivalent ±0.02" in cells[-1].text
    verdicts = driver.find_element(By.CSS_SELECTOR, "ul.verdicts").text
    assert "resolved, higher" in verdicts and "equivalent within ±0.02" in verdicts
    assert not driver.find_element(By.CSS_SELECTOR, "details").get_attribute("open")  # other columns folded
    for img in driver.find_elements(By.CSS_SELECTOR, "img.tradeoff"):
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100


def test_ratio_plot_only_when_an_attribution_ran_several_ratios():
    def row(ratio, mean):
        return {"attribution": "wagle", "objective": "graddiff", "ratio": ratio,
                "key": MethodKey("wagle", ratio, "graddiff"),
                "metrics": {"tradeoff_score": {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}}}

    assert plots.ratio_png("t", [row(0.5, 0.7)]) is None
    assert plots.ratio_png("t", [row(0.5, 0.7), row(0.8, 0.6)])[:4] == b"\x89PNG"


def test_headline_names_the_level_it_matched():
    """The level text: the retain model's forget probe when there is one, else the task's declared level."""
    from leaderboard.headline import level_text

    rows = [{"level": 0.3}]
    assert level_text(rows, [{"role": "target", "probe": {"forget": 0.7}},
                             {"role": "retain", "probe": {"forget": 0.176}}]) == "the retain model's (0.176)"
    assert level_text(rows, [{"role": "target", "probe": {"forget": 0.7}}]) == (
        "the level the task declares, 0.3 (it has no retain model)")
    # a grid without matched forgetting (SPUNGE) wrote the same models' records without the probe: they give way
    spec = {"task": "t", "model": "m", "task_config": {"eval_limit": 20}}

    def ref(rid, role, probe=None):
        return {"kind": "reference", "id": rid, "role": role, "model": f"/cache/{role}",
                "spec": dict(spec, match={"enabled": True}) if probe else spec, "probe": probe}

    refs = table.references([ref("a", "retain"), ref("b", "retain", {"forget": 0.176}), ref("c", "target"),
                             ref("d", "target", {"forget": 0.9}), dict(ref("e", "target"), model="/cache/other")])
    assert [r["id"] for r in refs] == ["d", "e", "b"]  # target first; another model's record stays
    assert level_text(rows, refs) == "the retain model's (0.176)"


def test_one_seed_pair_has_no_interval_and_ranks_nothing():
    from leaderboard.headline import diff_label, findings
    from leaderboard.verdicts import CompareConfig, decide

    (one,) = decide([[0.0644]], CompareConfig())
    one.update(label="wagle (0.5) + graddiff", baseline="dense", metric="tradeoff_score", role="primary")
    assert diff_label(one).startswith("+0.0644 (one pair: no interval) undecided (p 1; detectable ≥ ∞")
    assert findings([one]) == [f"- wagle (0.5) + graddiff vs dense, tradeoff_score: {diff_label(one)} over 1 seed "
                               "pairs; an exact test over a family of 1 needs ≥ 6 pairs."]
    assert findings([]) == ["- No declared comparison: no method was paired by seed with a declared baseline."]


def test_a_verdict_line_says_how_far_it_carries_to_other_questions():
    from leaderboard.headline import findings
    from leaderboard.verdicts import CompareConfig, decide

    (d,) = decide([[0.03, 0.05, 0.02, 0.04, 0.06, 0.05, 0.03, 0.04]], CompareConfig(baselines=["dense"]))
    d.update(label="wagle (0.5) + graddiff", baseline="dense", metric="tradeoff_score", role="primary",
             two_level_low=-0.0123, two_level_high=0.0871, question_share=0.934)
    assert findings([d])[0].endswith("σ_d 0.013; over seeds and questions [-0.0123, +0.0871], the questions' share "
                                     "93%.")
    d.update(two_level_low=None, two_level_high=None, question_share=None)  # runs that kept no questions
    assert findings([d])[0].endswith("σ_d 0.013.")


def test_a_baseline_without_a_mask_pairs_with_every_ratio():
    from leaderboard.paired import _baseline

    def method(attribution, ratio, objective, optimizer="adamw"):
        return "t", "m", MethodKey(attribution, ratio, objective, optimizer)

    wagle = method("wagle", 0.5, "graddiff")
    methods = [wagle, method("lora", 1.0, "graddiff"), method("random", 0.8, "graddiff"),
               method("random", 0.5, "graddiff"), method("dense", 1.0, "npo"), method("dense", 1.0, "graddiff", "soul")]
    assert _baseline(wagle, "lora", methods)[2].attribution == "lora"  # LoRA has no mask: keyed at ratio 1
    assert _baseline(wagle, "random", methods)[2].ratio == 0.5  # a mask baseline at the method's own ratio
    assert _baseline(wagle, "dense", methods) is None  # dense ran another objective, or another update rule


def _variant(runs: Path, rid: str, seed: int, **spec_fields) -> None:
    """A matched dense + GradDiff run with a probe curve, its spec changed by `spec_fields`."""
    spec = {"task": "tofu-mini", "model": "m", "attribution": "dense", "ratio": 1.0, "objective": "graddiff",
            "seed": seed, "train": {"lr": 1e-4}, **spec_fields}
    metrics = {"forget_rouge": {"value": 0.3, "direction": "lower", "group": "forget"},
               "match_utility": {"value": 0.4, "direction": "higher", "group": "match"},
               "tradeoff_score": {"value": 0.8, "direction": "higher", "group": "match"}}
    record = {"record_version": 1, "id": rid, "kind": "run", "spec": spec, "status": "finished",
              "headline": {"forget": "forget_rouge", "utility": "match_utility"}, "metrics": metrics,
              "match": {"probe": "utility", "start": 0.9, "level": 0.1, "reference": 0.5},
              "curves": {"probe": [{"step": 0, "forget": 0.9, "utility": 0.5},
                                   {"step": 2, "forget": 0.1, "utility": 0.4}]}}
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{rid}.json").write_text(json.dumps(record))


def test_one_method_definition_splits_rows_and_legends(tmp_path):
    """AdamW, SOUL and offset runs of one mask and objective are three methods: three rows, three labels, three
    legend entries, three points; the same method probed on one seed only, or run on another device, stays one."""
    runs = tmp_path / "results" / "runs"
    for seed in (0, 1):
        _variant(runs, f"adamw-{seed}", seed, device="cpu" if seed else "cuda",
                 probes=["relearn"] if seed == 0 else [], full_evaluation=seed == 0)
        _variant(runs, f"soul-{seed}", seed, optimizer="soul")
        _variant(runs, f"offset-{seed}", seed, offset={"enabled": True, "small_model": "smollm2-offset"})
    records = table.read_records(tmp_path / "results")
    rows = aggregate.method_rows(records)
    assert [r["label"] for r in rows] == ["dense (1) + graddiff", "dense (1) + graddiff [offset via smollm2-offset]",
                                          "dense (1) + graddiff [soul]"]
    assert all(r["n"] == 2 for r in rows)
    assert sorted(plots.trajectory_series(records)) == sorted(r["label"] for r in rows)
    points = plots.tradeoff_points(rows, [], {"forget": "forget_rouge", "utility": "match_utility"})
    assert sorted(p["label"] for p in points) == sorted(r["label"] for r in rows)
    # two methods that differ in a setting the label does not show get the setting's digest, never one name
    _variant(runs, "slow-0", 0, train={"lr": 1e-5})
    labels = [r["label"] for r in aggregate.method_rows(table.read_records(tmp_path / "results"))]
    assert len(set(labels)) == 4 and sum(label.startswith("dense (1) + graddiff #") for label in labels) == 2


def test_the_command_line_ends_with_the_verdicts(matched_results, tmp_path, capsys):
    """`leaderboard` (and `sweep --leaderboard`, as `make demo` runs it) prints the verdict lines last."""
    from harness import cli

    assert cli.main(["-q", "leaderboard", str(matched_results), "--out", str(tmp_path / "board")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    verdict_lines = [line for line in out if line.startswith("- wagle (0.5) + graddiff vs")]
    assert out[-2:] == verdict_lines and [line.split(" vs ")[1].split(",")[0] for line in verdict_lines] == [
        "dense", "random"]
    assert all(w in " ".join(verdict_lines) for w in ("tradeoff_score", "seed pairs"))


def test_records_as_one_tidy_frame(results):
    """harness.run.records.frame: one row per record and metric, grouped with pandas as a notebook would; the
    leaderboard's method rows are the same numbers."""
    from harness.run.records import frame

    df = frame(results)
    assert {"id", "kind", "status", "task", "seed", "method", "metric", "value", "direction"} <= set(df.columns)
    runs = df[(df.kind == "run") & (df.status == "finished") & (df.metric == "forget_rouge")]
    means = runs.groupby(runs.method.map(lambda k: k.label)).value.mean()
    assert means["wagle (0.5) + npo"] == pytest.approx((0.5 + 0.7 + 0.6) / 3)
    assert means["dense (0.5) + npo"] == pytest.approx(0.4)
    rows = {r["label"]: r for r in aggregate.method_rows(table.read_records(results))}
    assert rows["wagle (0.5) + npo"]["metrics"]["forget_rouge"]["mean"] == pytest.approx(means["wagle (0.5) + npo"])
    assert df[df.kind == "reference"].method.isna().all()


def _scored(attribution: str, seed: int, score: float, status: str = "finished") -> dict:
    spec = {"task": "tofu-mini", "model": "m", "attribution": attribution, "ratio": 0.5, "objective": "graddiff",
            "seed": seed, "train": {"lr": 1e-4}}
    return {"kind": "run", "id": f"{attribution}-{seed}", "spec": spec, "status": status,
            "metrics": {"tradeoff_score": {"value": score, "direction": "higher", "group": "match"}}}


def test_a_verdict_waits_for_every_planned_seed():
    """Eight pairs that would resolve (all +0.1 ± small) stay interim while a ninth planned seed has not run
    for both methods; a run that ended failed counts as run (its seed then has no pair)."""
    from leaderboard import paired
    from leaderboard.headline import findings
    from leaderboard.verdicts import CompareConfig

    rng = np.random.default_rng(0)
    found = [_scored("dense", s, 0.9) for s in range(8)]
    found += [_scored("wagle", s, 1.0 + rng.normal(0, 0.01)) for s in range(8)]
    planned = CompareConfig(baselines=["dense"], secondary=[], seeds=list(range(9)))
    (row,) = paired.paired_rows(found, planned)
    assert row["verdict"] == "interim" and row["pending"] == 1 and row["p_adj"] < 0.05
    assert "interim, 1 planned seed pairs still to run" in findings([row])[0]
    (row,) = paired.paired_rows([*found, _scored("dense", 8, 0.9), _scored("wagle", 8, 0.0, "failed")], planned)
    assert row["verdict"] == "higher" and row["pending"] == 0 and row["n"] == 8
    (row,) = paired.paired_rows(found, CompareConfig(baselines=["dense"], secondary=[]))  # no plan: as found
    assert row["verdict"] == "higher"


def test_two_finished_runs_of_one_seed_are_refused(results):
    from harness.run.records import RecordError

    _record(results / "runs", "wagle-0-again", seed=0, forget=0.1, utility=0.1)
    with pytest.raises(RecordError, match=r"wagle-0-again and wagle-0 are both finished runs of wagle .* seed 0 "
                                          r"\(made by code core unrecorded"):
        table.read_records(results)


def test_rehearsals_never_mix_with_real_runs(results):
    from harness.run.records import RecordError

    record = json.loads((results / "runs" / "wagle-0.json").read_text())
    record["id"], record["spec"] = "rehearsed", dict(record["spec"], rehearsal=True, seed=9)
    (results / "runs" / "rehearsed.json").write_text(json.dumps(record))
    with pytest.raises(RecordError, match=r"mixes rehearsal runs .* with real ones"):
        table.read_records(results)
