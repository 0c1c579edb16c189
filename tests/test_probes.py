"""Post-unlearning probes: each formula against a hand computation, quantization undoing a constructed
sub-step update, and a real run that records every probe."""

from __future__ import annotations

import copy
import math
import zlib

import numpy as np
import pytest
import torch

from harness.api import Evaluation, Example, Metric, ProbeContext, ProbeSets
from harness.measure import metrics
from harness.measure.probes import quantization, relearn
from harness.measure.probes.mia import MiaConfig, aucs, scores
from harness.measure.scoring import completion_nll, token_stats
from harness.plugins import get_registry

FORGET = [Example(f"Question: What does author {i} write?\nAnswer:", f" Author {i} writes sagas about dragons.")
          for i in range(6)]
HOLDOUT = [Example(f"Question: Where was poet {i} born?\nAnswer:", f" Poet {i} was born by a quiet river.")
           for i in range(6)]


def test_rtn_is_round_to_nearest_on_the_min_max_grid():
    torch.manual_seed(0)
    w = torch.randn(3, 8)
    got = quantization.rtn(w, 4, 4)
    hand = torch.empty_like(w)
    for r in range(3):
        for s in range(0, 8, 4):  # asymmetric min-max over the group, the range stretched to hold 0
            x = w[r, s : s + 4].double()
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            scale = (hi - lo) / 15
            zero = -round(lo / scale)
            q = torch.clamp(torch.round(x / scale) + zero, 0, 15)
            hand[r, s : s + 4] = ((q - zero) * scale).float()
    assert torch.allclose(got, hand, atol=1e-6)
    assert all(got[r, s : s + 4].unique().numel() <= 4 for r in range(3) for s in (0, 4))
    assert quantization.rtn(w, 8, None).sub(w).abs().max() < 0.02  # 8 bits per channel: close to w
    ragged = torch.randn(2, 12)  # 12 columns in groups of 8: one group of 8, a last one of 4
    assert torch.equal(quantization.rtn(ragged, 4, 8), torch.cat([quantization.rtn(ragged[:, :8], 4, 8),
                                                                  quantization.rtn(ragged[:, 8:], 4, None)], 1))
    assert quantization.rtn(ragged, 4, 8)[:, 8:].unique().numel() <= 2 * 16


def _forget_prob(model, tok) -> Evaluation:
    p = float(np.mean(metrics.probability(completion_nll(model, tok, FORGET, 8, 64))))
    return Evaluation({"forget_prob": Metric(p, "lower", "forget"), "retain_prob": Metric(0.5, "higher", "utility")})


def _context(tok, unlearned: Evaluation, target_value: float) -> ProbeContext:
    def cached(name, key, compute):
        return compute()

    return ProbeContext(task=None, tokenizer=tok, evaluate=lambda m: _forget_prob(m, tok),
                        unlearned=unlearned.metrics,
                        target={"model": "t", "metrics": {"forget_prob": {"value": target_value}}}, retain=None,
                        load=None, cached=cached)


@pytest.mark.parametrize("steps", [0.3, 3.0])
def test_quantization_undoes_an_update_below_half_a_step(tiny, steps):
    """The target's weights lie on the 4-bit grid; unlearning moves every weight strictly inside its row's range
    by `steps` quantization steps. Below half a step, rounding returns exactly the target (undone = 1); three
    steps survive quantization."""
    model, tok = tiny
    probe = get_registry().build("probe", "quantization", {"settings": [{"bits": 4, "group_size": None}]})
    with torch.no_grad():
        grid = probe.quantized_weights(model, {"bits": 4, "group_size": None})
        params = dict(model.named_parameters())
        for name, w in grid.items():
            params[name].copy_(w)
    target_value = _forget_prob(model, tok).metrics["forget_prob"].value
    with torch.no_grad():
        for name in grid:
            w = params[name]
            lo, hi = w.min(1, keepdim=True).values.clamp(max=0), w.max(1, keepdim=True).values.clamp(min=0)
            step = (hi - lo) / 15
            inner = (w > w.min(1, keepdim=True).values) & (w < w.max(1, keepdim=True).values)
            towards_middle = torch.sign((lo + hi) / 2 - w)
            w.add_(inner * towards_middle * steps * step)
    unlearned = _forget_prob(model, tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = probe.run(model, _context(tok, unlearned, target_value))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights put back
    assert unlearned.metrics["forget_prob"].value != pytest.approx(target_value, abs=1e-9)
    assert set(out) == {"int4_forget_prob", "int4_forget_prob_undone"}  # forget metrics only
    if steps < 0.5:
        assert out["int4_forget_prob"].value == pytest.approx(target_value, abs=1e-7)
        assert out["int4_forget_prob_undone"].value == pytest.approx(1.0, abs=1e-4)
    else:
        assert abs(out["int4_forget_prob_undone"].value - 1.0) > 0.05


def test_mia_scores_by_hand():
    lp = np.array([-0.5, -3.0, -0.1, -2.0, -1.0])  # the last token is the EOS: Min-K drops it, LOSS keeps it
    assert metrics.min_k_score(lp[:-1], 0.4) == pytest.approx(3.0)  # int(4 · 0.4) = 1 lowest
    assert metrics.min_k_score(lp[:-1], 0.5) == pytest.approx((3.0 + 2.0) / 2)  # int(4 · 0.5) = 2 lowest
    assert metrics.min_k_score(lp[:-1], 0.1) == pytest.approx(3.0)  # max(1, int(0.4)) = 1
    mu, var = np.array([-1.0, -2.0, -0.5, -1.5]), np.array([0.25, 1.0, 1e-9, 4.0])
    z = [(-0.5 + 1.0) / 0.5, (-3.0 + 2.0) / 1.0, (-0.1 + 0.5) / math.sqrt(1e-6), (-2.0 + 1.5) / 2.0]
    assert metrics.min_k_plus_plus_score(lp[:-1], mu, var, 0.5) == pytest.approx(-(z[1] + z[3]) / 2)
    text = "Author 3 writes sagas."
    assert metrics.zlib_score(1.7, text) == pytest.approx(1.7 / len(zlib.compress(text.encode("utf-8"))))
    hits = np.array([True, False, True, True])
    assert metrics.exact_memorization(hits) == 0.75
    assert metrics.extraction_strength(hits) == pytest.approx(1 - 2 / 4)  # tokens 2.. all greedy
    assert metrics.extraction_strength(np.array([True, True, True])) == 1.0
    assert metrics.extraction_strength(np.array([True, False])) == pytest.approx(0.5)  # the reference's 1/n floor


def test_mia_auc_is_open_unlearnings_roc_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    forget, holdout = [*rng.normal(1.0, 1.0, 30), 1.0], [*rng.normal(1.6, 1.0, 25), 1.0, 1.0]  # ties count half
    # utils.py::mia_auc: forget labelled 0, holdout 1, roc_auc_score(labels, scores)
    labels = [0] * len(forget) + [1] * len(holdout)
    assert metrics.auc(forget, holdout) == pytest.approx(roc_auc_score(labels, forget + holdout), abs=1e-12)
    auc, ref = 0.8, 0.55
    assert metrics.privleak(1 - auc, 1 - ref) == pytest.approx(((1 - auc) - (1 - ref)) / (1 - ref) * 100)


def test_token_stats_and_attack_scores_match_the_model(tiny):
    model, tok = tiny
    stats = token_stats(model, tok, FORGET[:3], batch_size=2, max_length=64)
    nll = completion_nll(model, tok, FORGET[:3], 8, 64)
    for s, n, ex in zip(stats, nll, FORGET[:3], strict=True):
        ids = tok(ex.prompt + ex.completion)["input_ids"] + [tok.eos_token_id]
        prompt = len(tok(ex.prompt)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
        rows = torch.arange(prompt - 1, len(ids) - 1)
        want = logp[rows, torch.tensor(ids[prompt:])]
        assert np.allclose(s.logp, want.numpy(), atol=1e-5) and s.labels.tolist() == ids[prompt:]
        p = logp[rows].exp()
        assert np.allclose(s.mu, (p * logp[rows]).sum(-1).numpy(), atol=1e-5)
        assert np.allclose(s.var, (p * logp[rows] ** 2).sum(-1).numpy() - s.mu**2, atol=1e-4)
        assert s.hit.tolist() == (logp[rows].argmax(-1) == torch.tensor(ids[prompt:])).tolist()
        assert -s.logp.mean() == pytest.approx(n, rel=1e-5)  # LOSS: the token-mean NLL, EOS included
    assert scores(stats, ["a", "b", "c"], "loss", 0.4) == pytest.approx(list(nll), rel=1e-5)
    got = aucs(model, tok, FORGET, HOLDOUT, MiaConfig(), 4, 64)
    assert set(got) == {"loss", "zlib", "min_k", "min_k++"} and all(0 <= v <= 1 for v in got.values())


def test_relearning_splits_the_forget_set_evenly_and_scores_the_rest():
    assert relearn.spread(10, 0.5) == [0, 2, 4, 6, 8]
    assert relearn.spread(5, 0.2) == [0] and relearn.spread(3, 0.9) == [0, 1, 2]
    sets = ProbeSets(FORGET, {}, alternatives={"forget": [[Example(e.prompt, " No.")] for e in FORGET]})
    held = relearn.held_out(sets, [FORGET[i] for i in relearn.spread(len(FORGET), 0.5)])
    assert held.forget == [FORGET[1], FORGET[3], FORGET[5]]
    assert [a[0].prompt for a in held.alternatives["forget"]] == [FORGET[i].prompt for i in (1, 3, 5)]
    with pytest.raises(ValueError, match=r"lower relearn\.fraction"):
        relearn.held_out(ProbeSets(FORGET[:1], {}), FORGET[:1])
    # the probe scores a fixed part (TOFU-mini: its stopping author): every other forget example is relearned
    data, scored = relearn.split(FORGET, ProbeSets(FORGET[4:], {}), 0.5)
    assert data == FORGET[:4] and scored.forget == FORGET[4:]
    data, scored = relearn.split(FORGET, sets, 0.5)  # the probe scores them all: half relearned, half scored
    assert data == [FORGET[i] for i in (0, 2, 4)] and scored.forget == held.forget


def test_relearning_takes_its_tasks_settings():
    from harness.api import Task

    muse = get_registry().get("task", "muse-news").cls
    cfg = relearn.RelearnConfig()
    assert relearn.settings(cfg, Task.relearn_settings) == {"lr": 1e-5, "batch_size": 4, "epochs": 3}  # Unlearn-Smooth
    assert relearn.settings(cfg, muse.relearn_settings) == {"lr": 1e-5, "batch_size": 4, "steps": 100}
    assert get_registry().get("task", "copyright-books").cls.relearn_settings["steps"] == 50
    tofu = get_registry().get("task", "tofu-mini").cls.relearn_settings
    assert relearn.settings(relearn.RelearnConfig(steps=7, lr=1e-4), tofu) == {"lr": 1e-4, "batch_size": 4,
                                                                                "steps": 7}


def test_relearning_moves_a_copy_and_leaves_the_model(tiny):
    model, tok = tiny
    probe = get_registry().build("probe", "relearn", {"steps": 3, "lr": 1e-2, "batch_size": 2})
    model.requires_grad_(False)  # as a LoRA merge leaves the base weights: relearning must still move them
    before = copy.deepcopy(model.state_dict())
    held = ProbeSets(FORGET[1::2], {})
    ctx = _context(tok, Evaluation({}), 0.0)
    ctx.task = type("T", (), {"max_length": 64, "relearn_settings": {"lr": 1e-5, "batch_size": 4, "epochs": 3}})()
    start = probe.forget_probe(model, ctx, held)
    learner = probe.relearned_copy(model, ctx, FORGET[::2])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert probe.forget_probe(learner, ctx, held) > start  # the held-out answers share the relearned pattern


def test_probe_config_errors_name_the_field():
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="bits"):
        get_registry().build("probe", "quantization", {"settings": [{"bits": 1}]})
    with pytest.raises(ConfigError, match="privleak_attack"):
        get_registry().build("probe", "mia", {"attacks": ["loss"]})


def test_a_run_records_every_probe_and_the_leaderboard_shows_them(tmp_path):
    from harness.config import from_dict
    from harness.run import records, runner
    from harness.run.spec import RunSpec
    from leaderboard import table

    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "dense", "objective": "graddiff",
        "task_config": {"utility_limit": 4, "eval_limit": 8, "max_new_tokens": 4, "retain_authors": 1},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}, "prepare": {"epochs": 1},
        "probes": ["quantization", "relearn", "mia", "extraction"],
        "probe_config": {"relearn": {"steps": 2}, "quantization": {"settings": [{"bits": 4, "group_size": 128}]}},
    }, "test")
    record = runner.execute(spec, tmp_path)
    assert record.status == "finished" and set(record.probes) == set(spec.probes)
    probed = {k: m for k, m in record.metrics.items() if m["group"] == "probe"}
    assert set(probed) == {n for p in record.probes.values() for n in p["metrics"]}
    for name in ("int4_g128_forget_rouge", "int4_g128_forget_prob_undone", "relearn_forget", "relearn_excess",
                 "mia_min_k_auc", "mia_privleak", "mia_min_k++_privleak", "forget_extraction_strength",
                 "forget_exact_memorization_retain_model"):
        assert name in probed, name
    assert probed["relearn_forget"]["value"] > probed["relearn_forget_before"]["value"]  # relearning relearns
    assert probed["mia_privleak"]["value"] == pytest.approx(metrics.privleak(
        1 - probed["mia_min_k_auc"]["value"], 1 - probed["mia_min_k_auc_retain_model"]["value"]))
    assert record.timings["probes_s"] > 0
    assert records.read(tmp_path / "runs" / f"{record.id}.json").probes == record.probes
    # another probe list is another run; the same spec again is the same run
    assert runner.canonical(spec, get_registry()).run_id() != RunSpec(**{**vars(spec), "probes": []}).run_id()
    out = tmp_path / "board"
    written = table.write_all(tmp_path, out)
    header = (out / "runs.csv").read_text().splitlines()[0]
    assert "relearn_forget ↓" in header and "mia_privleak →0" in header
    md = (out / "leaderboard.md").read_text()
    probes_table = md[md.index("### Robustness and privacy probes"):]
    assert "int4_g128_forget_rouge" in probes_table and "int4_g128_forget_rouge" not in md[: md.index(probes_table)]
    summary = next(line for line in probes_table.splitlines() if line.startswith("| method"))  # the headline first
    assert summary.split(" | ")[5:9] == ["forget_rouge ↓", "int4_g128_forget_rouge ↓",
                                         "int4_g128_forget_rouge_undone ↓", "relearn_forget_before"]
    # a metric fewer seeds have than the row (relearning on seed 0 only) says so
    assert table._ci({"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 1}, 3) == "0.5 (1 of 3 seeds)"
    assert "Robustness and privacy probes" in (out / "index.html").read_text()
    assert out / "tradeoff-tofu-mini-int4_g128_forget_rouge-model_utility.png" in written


def test_a_sweep_probes_the_seeds_it_names_and_never_a_tuning_run():
    from harness.config import from_dict
    from harness.errors import ConfigError, UnknownPluginError
    from harness.sweeps import sweep

    base = {"task": "tofu-mini", "model": "tiny-llama", "attributions": ["dense"], "objectives": ["graddiff"],
            "seeds": [0, 1], "probes": ["quantization", "relearn"], "probe_seeds": {"relearn": [1]},
            "probe_config": {"relearn": {"steps": 3}}, "match": {"enabled": True},
            "tune": {"enabled": True, "lr_factors": [1.0]}}
    cfg = from_dict(sweep.SweepConfig, base, "test")
    specs = {s.seed: s for s in sweep.expand(cfg)}
    assert specs[0].probes == ["quantization"] and specs[0].probe_config == {}
    assert specs[1].probes == ["quantization", "relearn"] and specs[1].probe_config == {"relearn": {"steps": 3}}
    assert all(s.probes == [] for runs in sweep.tuning_grid(cfg).values() for s in runs)
    # probing some seeds only leaves them one method on the leaderboard (one row, paired seed by seed)
    from harness.config import to_dict
    from harness.run.method import MethodKey
    assert MethodKey.of(to_dict(specs[0])) == MethodKey.of(to_dict(specs[1]))
    with pytest.raises(UnknownPluginError, match="mia"):
        sweep.expand(from_dict(sweep.SweepConfig, {**base, "probes": ["mai"]}, "test"))
    with pytest.raises(ConfigError, match="probe_seeds names mia"):
        sweep.expand(from_dict(sweep.SweepConfig, {**base, "probe_seeds": {"mia": [0]}}, "test"))


def test_fp4_blocks_by_hand():
    """FP4 in blocks of 4 (the rule of 64, smaller). Block 1, absmax 1: the table itself (magnitudes 0, 1/192,
    1/6, 1/4, 1/3, 1/2, 2/3, 1); 0.0859375 is the kernel's pivot between 1/192 and 1/6, so it goes to the
    smaller; -0.001 keeps its sign on a zero magnitude. Block 2, absmax 12: the table × 12 (0, 0.0625, 2, 3,
    4, 6, 8, 12). An all-zero block stays zero."""
    from harness.measure.probes.quantization import absmax_4bit, fp4_code

    w = torch.tensor([[1.0, 0.0859375, 0.09, -0.001], [12.0, -7.5, 1.0, 2.9], [0.0, 0.0, 0.0, 0.0]])
    got = absmax_4bit(w, fp4_code, blocksize=4)
    want = torch.tensor([[1.0, 1 / 192, 1 / 6, -0.0], [12.0, -8.0, 0.0625, 3.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(got, want, atol=1e-6)
    assert math.copysign(1.0, got[0, 3].item()) == -1.0  # the sign bit of -0.001


def test_nf4_and_llm_int8_by_hand():
    from harness.measure.probes.quantization import NF4, absmax_4bit, llm_int8, nf4_code

    # NF4, absmax 2: the table × 2; 0.1 / 2 = 0.05 lies above the midpoint of 0 and 0.0796 (0.0398), so it
    # becomes 0.0796 × 2; -1.9 / 2 = -0.95 is nearest -1
    w = torch.tensor([2.0, 0.1, -1.9, 0.0])
    assert torch.allclose(absmax_4bit(w, nf4_code, blocksize=4), torch.tensor([2.0, 2 * NF4[8], -2.0, 0.0]))
    # LLM.int8: each row × 127 / absmax (here 1), rounded half to even (63.5 → 64, 2.5 → 2, 1.5 → 2, -31.75 →
    # -32), back; a zero row stays zero
    w = torch.tensor([[127.0, 63.5, 2.5, 1.5, -31.75], [0.0, 0.0, 0.0, 0.0, 0.0]])
    want = torch.tensor([[127.0, 64.0, 2.0, 2.0, -32.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(llm_int8(w), want, rtol=1e-6)


def test_the_4bit_and_8bit_grids_equal_bitsandbytes():
    """Against bitsandbytes' own CPU kernels (0.50: the exact 4-bit tables), on a SmolLM2-shaped weight. NF4
    and LLM.int8 agree everywhere; FP4 everywhere but where x/absmax lies within 1e-6 of a pivot: our pivots
    are the CUDA kernel's literals (dQuantizeFP4, what the paper ran), the CPU backend's are the table's
    float32 midpoints."""
    bnb = pytest.importorskip("bitsandbytes.functional")
    from harness.measure.probes.quantization import FP4_PIVOTS, absmax_4bit, fp4_code, llm_int8, nf4_code

    w = torch.randn(96, 576, generator=torch.Generator().manual_seed(0)) * 0.02
    q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(absmax_4bit(w, nf4_code, 64), bnb.dequantize_4bit(q, state))
    q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="fp4")
    differ = (absmax_4bit(w, fp4_code, 64) != bnb.dequantize_4bit(q, state)).flatten()
    blocks = w.flatten().view(-1, 64)
    scaled = (blocks * (1.0 / blocks.abs().amax(1, keepdim=True))).flatten().abs()
    near = (scaled[:, None] - torch.tensor(FP4_PIVOTS)).abs().amin(1) < 1e-6
    assert int(differ.sum()) <= 2 and bool(near[differ].all())
    cb, scb, _ = bnb.int8_vectorwise_quant(w.half())
    assert torch.allclose(llm_int8(w), bnb.int8_vectorwise_dequant(cb, scb), rtol=1e-6, atol=1e-9)
