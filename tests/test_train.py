import dataclasses
import math
from pathlib import Path

import pytest
import torch

from harness.api import Example, LossOutput
from harness.errors import NonFiniteLossError, UnlearnBenchError
from harness.learn import masks
from harness.learn.data import collate, encode
from harness.learn.train import TrainConfig, finetune_batches, train
from harness.learn.update import UpdatePlan
from harness.measure.scoring import mean_nll

EXAMPLES = [Example(f"Question: what is item {i}?\nAnswer:", f" Item {i} is a thing number {i * 7}.")
            for i in range(8)]


def _loss(model, batch):
    return LossOutput(mean_nll(model, batch).mean())


def _random_mask(model, ratio: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    return masks.top_fraction(scores, ratio)


def test_masked_out_weights_stay_bit_identical_on_the_embedded_model(smol):
    model, tok = smol
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = _random_mask(model, 0.3)
    mask["model.norm.weight"][:] = False  # a fully frozen tensor leaves the optimizer
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=4, weight_decay=0.1)  # weight decay would leak
    batches = finetune_batches(tok, EXAMPLES, cfg, 64, seed=0)
    try:
        train(model, batches, _loss, cfg, plan=UpdatePlan(mask))
        changed = 0
        for name, p in model.named_parameters():
            m = mask[name]
            assert torch.equal(p.detach()[~m], before[name][~m]), name
            changed += int((p.detach()[m] != before[name][m]).sum())
        assert changed > 0.5 * sum(int(m.sum()) for m in mask.values())  # masked-in weights did move
        assert all(p.requires_grad for p in model.parameters())  # frozen flags restored
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(before[name])


def test_training_reduces_loss_and_is_deterministic(tiny):
    model, tok = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(lr=5e-3, epochs=6, batch_size=4, warmup_ratio=0.0)
    results = []
    for _ in range(2):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        log = train(model, finetune_batches(tok, EXAMPLES, cfg, 64, seed=1), _loss, cfg, seed=1)
        results.append([row["loss"] for row in log.steps])
    assert results[0] == results[1]
    assert results[0][-1] < results[0][0]


def test_schedule_warmup_and_linear_decay(tiny):
    model, tok = tiny
    cfg = TrainConfig(lr=1e-3, epochs=5, batch_size=4, warmup_ratio=0.2)  # 10 steps, 2 warmup
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = train(model, finetune_batches(tok, EXAMPLES, cfg, 64, seed=0), _loss, cfg)
    lrs = [row["lr"] for row in log.steps]
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert lrs[-1] == pytest.approx(1e-3 / 8) and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n])


def test_constant_schedule_and_a_stop_asked_by_the_step_callback(tiny):
    model, tok = tiny
    cfg = TrainConfig(lr=1e-3, epochs=5, batch_size=4, warmup_ratio=0.2, schedule="constant")  # 10 steps
    seen = []

    def on_step(step, net):
        seen.append(step)
        return {"stop": step == 4} if step % 2 == 0 else None

    log = train(model, finetune_batches(tok, EXAMPLES, cfg, 64, seed=0), _loss, cfg, on_step=on_step)
    assert [row["lr"] for row in log.steps] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    assert seen == [1, 2, 3, 4] and log.stopped_at == 4 and log.steps[-1]["eval"] == {"stop": True}
    assert log.bf16_autocast is False
    with pytest.raises(ValueError, match="schedule 'cosine': choose linear or constant"):
        TrainConfig(schedule="cosine").validate()


def test_nan_loss_stops_with_a_message(tiny):
    model, tok = tiny
    cfg = TrainConfig(epochs=1, batch_size=4)

    def nan_after_first(model, batch, calls=[0]):  # noqa: B006
        calls[0] += 1
        loss = mean_nll(model, batch).mean()
        return LossOutput(loss * (math.nan if calls[0] > 1 else 1.0), {"forget_nll": 1.0})

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at optimizer step 2/2"):
        train(model, finetune_batches(tok, EXAMPLES, cfg, 64, seed=0), nan_after_first, cfg)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_accumulation_of_4x1_equals_1x4(tiny):
    model, tok = tiny
    start = _snapshot(model)
    rows = [encode(tok, ex, 64) for ex in EXAMPLES[:4]]
    big = [collate(rows, tok.pad_token_id)]
    small = [collate([r], tok.pad_token_id) for r in rows]
    results = []
    for batches, accum in ((big, 1), (small, 4)):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=4, grad_accum=accum, max_grad_norm=None)
        log = train(model, batches, _loss, cfg)
        results.append((_snapshot(model), log.steps[0]["loss"]))
    (a, loss_a), (b, loss_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-6), n


class Interrupt(Exception):
    pass


def _dies_at_call(n: int):
    """The test loss, raising Interrupt on its n-th call (a process killed mid-run)."""
    calls = {"n": 0}

    def loss(m, b):
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupt
        return _loss(m, b)

    return loss


def test_resume_from_checkpoint_equals_uninterrupted(tiny, tmp_path):
    model, tok = tiny
    start = _snapshot(model)
    cfg = TrainConfig(lr=3e-3, epochs=4, batch_size=4, checkpoint_every=2, weight_decay=0.1)
    batches = finetune_batches(tok, EXAMPLES, cfg, 64, seed=0)  # 8 steps
    mask = _random_mask(model, 0.5)

    def reset():
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])

    full = train(model, batches, _loss, cfg, plan=UpdatePlan(mask))
    expected = _snapshot(model)
    reset()
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train(model, batches, _dies_at_call(6), cfg, plan=UpdatePlan(mask), checkpoint=ckpt)
    assert ckpt.is_file() and not (tmp_path / "run.pt.tmp").exists()
    reset()  # a fresh process starts from the target weights again
    resumed = train(model, batches, _loss, cfg, plan=UpdatePlan(mask), checkpoint=ckpt)
    assert [r["loss"] for r in resumed.steps] == [r["loss"] for r in full.steps]
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), expected[n]), n


def test_a_resumed_run_is_handed_the_state_of_its_checkpoint_step(tiny, tmp_path):
    model, tok = tiny
    start = _snapshot(model)
    cfg = TrainConfig(lr=3e-3, epochs=4, batch_size=4, checkpoint_every=2)
    batches = finetune_batches(tok, EXAMPLES, cfg, 64, seed=0)
    at_step = {}

    def keep(step, m):
        at_step[step] = _snapshot(m)

    train(model, batches, _loss, cfg, on_step=keep)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n])
    ckpt, handed = tmp_path / "run.pt", []
    with pytest.raises(Interrupt):
        train(model, batches, _dies_at_call(6), cfg, checkpoint=ckpt, on_resume=lambda *a: handed.append(a))
    assert handed == []  # a fresh start resumes nothing
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n])
    train(model, batches, _loss, cfg, checkpoint=ckpt, on_resume=lambda step, m: handed.append((step, _snapshot(m))))
    (step, state), = handed
    assert step == 4 and all(torch.equal(state[n], at_step[4][n]) for n in state)


class _Payload:
    """Pickles as a call that creates a file: what a tampered checkpoint could run on load."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoint_holds_plain_data_and_a_tampered_one_is_refused(tiny, tmp_path):
    model, tok = tiny
    cfg = TrainConfig(lr=3e-3, epochs=1, batch_size=4, checkpoint_every=1)
    batches = finetune_batches(tok, EXAMPLES, cfg, 64, seed=0)

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train(model, batches, _dies_at_call(2), cfg, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)  # an honest checkpoint is tensors and plain data
    assert state["step"] == 1
    state["rng"] = _Payload(tmp_path / "pwned")
    torch.save(state, ckpt)
    with pytest.raises(UnlearnBenchError, match="refused"):
        train(model, batches, _loss, cfg, checkpoint=ckpt)
    assert not (tmp_path / "pwned").exists()


def test_masked_adamw_matches_torch_adamw_and_keeps_state_for_selected_entries():
    from harness.learn.optim import MaskedAdamW

    torch.manual_seed(0)
    init = torch.randn(6, 5)
    mask = torch.rand(6, 5) < 0.4
    grads = [torch.randn(6, 5) for _ in range(4)]
    ours, ref, full = (torch.nn.Parameter(init.clone()) for _ in range(3))
    opt = MaskedAdamW([{"params": [ours], "weight_decay": 0.1}], {id(ours): mask}, lr=0.01)
    opt_full = MaskedAdamW([{"params": [full], "weight_decay": 0.1}], {}, lr=0.01)
    torch_opt = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.1, foreach=False)
    for g in grads:
        ours.grad, full.grad, ref.grad = g.clone(), g.clone(), g.clone()
        opt.step()
        opt_full.step()
        torch_opt.step()
    assert torch.equal(full, ref)  # no mask: torch's AdamW exactly
    # AdamW is elementwise: the selected entries follow torch's AdamW, the others never move
    assert torch.equal(ours[mask], ref[mask]) and torch.equal(ours[~mask], init[~mask])
    assert opt.state_bytes() == 2 * int(mask.sum()) * 4 + 4  # two moments over the selected entries + step


def test_clipping_uses_the_selected_gradients_only_and_matches_torch():
    from harness.learn.optim import MaskedAdamW

    torch.manual_seed(1)
    init = [torch.randn(4, 6), torch.randn(5)]
    mask = torch.rand(4, 6) < 0.5
    grads = [torch.randn(4, 6) * 10, torch.randn(5) * 10]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    opt = MaskedAdamW([{"params": ours}], {id(ours[0]): mask}, lr=0.01, max_grad_norm=1.0)
    torch_opt = torch.optim.AdamW(ref, lr=0.01, weight_decay=0.0, foreach=False)
    ours[0].grad, ours[1].grad = grads[0].clone(), grads[1].clone()
    ref[0].grad, ref[1].grad = grads[0] * mask, grads[1].clone()  # what unlearning applies: the masked gradient
    norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    opt.step()
    torch_opt.step()
    expected = math.sqrt(float((grads[0][mask] ** 2).sum() + (grads[1] ** 2).sum()))
    assert opt.last_grad_norm == pytest.approx(expected, rel=1e-6) and float(norm) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(ours[0][mask], ref[0][mask], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-6, atol=1e-7)
    assert torch.equal(ours[0][~mask], init[0][~mask])
    assert opt.mask_bytes() == mask.numel()


def test_full_clipping_clips_every_entry_then_masks_as_wagles_code_does():
    from harness.learn.optim import MaskedAdamW

    torch.manual_seed(1)
    init = [torch.randn(4, 6), torch.randn(5), torch.randn(3)]
    mask = torch.rand(4, 6) < 0.5
    grads = [torch.randn(4, 6) * 10, torch.randn(5) * 10, torch.randn(3) * 10]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    none = torch.zeros(3, dtype=torch.bool)  # a parameter masked out entirely still counts in the norm
    opt = MaskedAdamW([{"params": ours}], {id(ours[0]): mask, id(ours[2]): none}, lr=0.01, max_grad_norm=1.0,
                      clip_scope="full")
    torch_opt = torch.optim.AdamW(ref, lr=0.01, weight_decay=0.0, foreach=False)
    for mine, theirs, g in zip(ours, ref, grads, strict=True):
        mine.grad, theirs.grad = g.clone(), g.clone()
    norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)  # clip the full gradient, then mask
    ref[0].grad.mul_(mask)
    ref[2].grad.zero_()
    opt.step()
    torch_opt.step()
    expected = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    assert opt.last_grad_norm == pytest.approx(expected, rel=1e-6) and float(norm) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(ours[0][mask], ref[0][mask], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-6, atol=1e-7)
    assert torch.equal(ours[0][~mask], init[0][~mask]) and torch.equal(ours[2], init[2])


def test_full_clipping_in_training_keeps_masked_out_weights_and_sees_their_gradients(tiny):
    model, tok = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = _random_mask(model, 0.3)
    mask["model.norm.weight"][:] = False  # entirely masked out: frozen under "selected", in the norm under "full"
    norms = {}
    for scope in ("selected", "full"):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        cfg = TrainConfig(lr=1e-2, epochs=1, batch_size=4, max_grad_norm=1e-3, clip_scope=scope)
        log = train(model, finetune_batches(tok, EXAMPLES, cfg, 64, seed=0), _loss, cfg, plan=UpdatePlan(mask))
        norms[scope] = log.steps[0]["grad_norm"]
        for n, p in model.named_parameters():
            assert torch.equal(p.detach()[~mask[n]], start[n][~mask[n]]), n
        assert all(p.requires_grad for p in model.parameters())
    assert norms["full"] > norms["selected"]  # the full gradient's norm counts the masked-out entries


def test_gradient_checkpointing_changes_memory_not_results(tiny):
    model, tok = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    runs = []
    for checkpointing in (False, True):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        cfg = TrainConfig(lr=5e-3, epochs=2, batch_size=4, gradient_checkpointing=checkpointing)
        seen = []
        log = train(model, finetune_batches(tok, EXAMPLES, cfg, 64, seed=1), _loss, cfg, seed=1,
                    on_step=lambda step, m, seen=seen: seen.append(m.is_activation_checkpointing))
        assert set(seen) == {checkpointing}
        runs.append(([row["loss"] for row in log.steps], {n: p.detach().clone() for n, p in model.named_parameters()}))
        assert not model.is_activation_checkpointing  # switched off again after training
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-5)
    for n, p in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][n], p, rtol=1e-5, atol=1e-6)


def test_fp32_master_weights_move_a_bf16_model_as_fp32_training_does(tiny):
    """At lr 1e-5 an Adam-sized step is below bf16's resolution for most weights: updating bf16 weights directly
    rounds most steps away, while an fp32 master copy accumulates them and ends where fp32 training ends,
    within the rounding of the final weights to bf16."""
    model, tok = tiny
    start = {n: p.detach().to(torch.bfloat16) for n, p in model.named_parameters()}
    cfg = TrainConfig(lr=1e-5, epochs=4, batch_size=4, warmup_ratio=0.0, schedule="constant", max_grad_norm=None)
    batches = finetune_batches(tok, EXAMPLES, cfg, 64, seed=0)
    finals = {}
    for name, dtype, master in (("fp32", torch.float32, False), ("master", torch.bfloat16, True),
                                ("plain", torch.bfloat16, False)):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.data = start[n].to(dtype).clone()  # the same bf16-representable start for all three
        log = train(model, batches, _loss, dataclasses.replace(cfg, master_weights=master))
        assert log.master_weights == (name == "master")
        finals[name] = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.float()

    def moved(run: str) -> float:
        changed = sum(int((finals[run][n].to(torch.bfloat16) != start[n]).sum()) for n in start)
        return changed / sum(t.numel() for t in start.values())

    assert moved("plain") < 0.5 * moved("fp32")  # most bf16 updates were rounded away
    assert abs(moved("master") - moved("fp32")) < 0.02
    for n in start:
        reference = finals["fp32"][n]
        ulp = torch.finfo(torch.bfloat16).eps * reference.abs().clamp_min(1e-30)
        close = (finals["master"][n].float() - reference).abs() <= ulp
        assert float(close.float().mean()) >= 0.99, n


class _Counting:
    """A tokenizer that counts the texts it tokenizes."""

    def __init__(self, tok) -> None:
        self.tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_batches_are_tokenized_when_reached_and_equal_the_eager_ones(tiny):
    from harness.learn.train import unlearn_batches

    _, tok = tiny
    counting = _Counting(tok)
    forget, retain = EXAMPLES[:6], EXAMPLES[6:]
    cfg = TrainConfig(epochs=3, batch_size=2)
    batches = unlearn_batches(counting, forget, retain, cfg, 64, seed=5)
    assert len(batches) == 9 and counting.calls == 0  # nothing tokenized before the loop asks
    first = batches[0]
    assert counting.calls == 2 * 4  # two texts per example (encode), two forget and two retain examples
    for got, (_, chunk, picks) in zip(batches, batches.plan, strict=True):  # same rows as tokenizing all at once
        want_f = collate([encode(tok, forget[i], 64) for i in chunk], tok.pad_token_id)
        want_r = collate([encode(tok, retain[i], 64) for i in picks], tok.pad_token_id)
        assert all(torch.equal(got.forget[k], want_f[k]) and torch.equal(got.retain[k], want_r[k]) for k in want_f)
    assert counting.calls == 2 * (len(forget) + len(retain))  # each example tokenized once, however often used
    assert all(torch.equal(first.forget[k], batches[0].forget[k]) for k in first.forget)
    assert [len(b.forget["input_ids"]) for b in batches[1:3]] == [2, 2]  # a slice is a list of batches


def test_fp32_unless_asked_even_where_bf16_is_fast(tiny, monkeypatch):
    """bf16 autocast is part of a run's protocol: off by default on every machine (here one that says bf16 is
    fast), on under null only where it is fast, and a null prepare config is keyed by what it resolved to."""
    from harness.learn import train as train_module
    from harness.plugins import get_registry
    from harness.run import prepare
    from harness.run.spec import PrepareConfig

    model, tok = tiny
    monkeypatch.setattr(train_module, "fast_bf16", lambda device: True)
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=4, max_steps=1)
    assert TrainConfig().bf16_autocast is False and PrepareConfig().bf16_autocast is False
    assert train(model, finetune_batches(tok, EXAMPLES, cfg, 64, seed=0), _loss, cfg).bf16_autocast is False
    assert train_module.autocast_on(TrainConfig(bf16_autocast=None), torch.device("cpu")) is True
    monkeypatch.setattr(prepare, "cached_dir", lambda kind, key, build: (key, True))  # the key, nothing built
    task = get_registry().build("task", "tofu-mini", {})

    def key(bf16: bool | None) -> str:
        return prepare.ensure_model(task, "tiny-llama", "target", PrepareConfig(bf16_autocast=bf16))[0]

    assert key(None) == key(True) != key(False)
    monkeypatch.setattr(train_module, "fast_bf16", lambda device: False)
    assert key(None) == key(False)
