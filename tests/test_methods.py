"""Attributions and objectives against independent computations on a tiny real model."""

import copy
import math

import pytest
import torch

from harness.api import AttributionData, Example, UnlearnBatch
from harness.learn.data import collate, encode, make_batches
from harness.plugins import get_registry

FORGET = [Example(f"Question: Who is author {i}?\nAnswer:", f" Author {i} writes about dragons and tea.")
          for i in range(5)]
RETAIN = [Example(f"Question: Where is city {i}?\nAnswer:", f" City {i} lies by a river in the north.")
          for i in range(5)]


def _per_sample_grad_sum(model, tok, examples):
    """Σ_i ∇ HF-loss(sample i), computed one sample at a time with torch.autograd.grad."""
    params = [p for _, p in model.named_parameters()]
    total = [torch.zeros_like(p) for p in params]
    for ex in examples:
        b = collate([encode(tok, ex, 64)], tok.pad_token_id)
        loss = model(input_ids=b["input_ids"], labels=b["labels"]).loss
        for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc += g
    return dict(zip([n for n, _ in model.named_parameters()], total, strict=True))


@pytest.mark.parametrize("scale", [1.0, 0.25])  # 0.25: the reference code's sums over 4 accumulation steps
def test_wagle_scores_match_the_formula(tiny, scale):
    model, tok = tiny
    gamma = 1e-2
    wagle = get_registry().build("attribution", "wagle", {"gamma": gamma, "gradient_scale": scale})
    data = AttributionData(model, tok, make_batches(tok, FORGET, 3, 64), make_batches(tok, RETAIN, 2, 64))
    result = wagle.scores(data)
    g_f = _per_sample_grad_sum(model, tok, FORGET)
    g_r = _per_sample_grad_sum(model, tok, RETAIN)
    for name, p in model.named_parameters():
        # the reference: G = Σ ∇(CE / 4), so its γ acts on plain sums as γ / s
        expected = ((p.detach() - scale * g_r[name] / gamma) * scale * g_f[name]).abs()
        assert torch.allclose(result.scores[name], expected, rtol=1e-4, atol=1e-7), name
    if scale != 1.0:
        return
    snip = math.sqrt(sum(float((p.detach() * g_f[n]).pow(2).sum()) for n, p in model.named_parameters()))
    assert result.info["snip_term_norm"] == pytest.approx(snip, rel=1e-4)


def test_dense_has_no_scores(tiny):
    model, tok = tiny
    dense = get_registry().build("attribution", "dense")
    assert dense.scores(AttributionData(model, tok, [], [])).scores is None


def _batch(tok, examples):
    return collate([encode(tok, ex, 64) for ex in examples], tok.pad_token_id)


def _hf_losses(model, tok, examples):
    out = []
    for ex in examples:
        b = _batch(tok, [ex])
        out.append(float(model(input_ids=b["input_ids"], labels=b["labels"]).loss.detach()))
    return out


def test_graddiff_loss_by_hand(tiny):
    model, tok = tiny
    obj = get_registry().build("objective", "graddiff", {"retain_weight": 0.3})
    with torch.no_grad():
        out = obj.loss(model, UnlearnBatch(_batch(tok, FORGET[:3]), _batch(tok, RETAIN[:2])))
    f, r = _hf_losses(model, tok, FORGET[:3]), _hf_losses(model, tok, RETAIN[:2])
    assert float(out.loss) == pytest.approx(-sum(f) / 3 + 0.3 * sum(r) / 2, rel=1e-5)


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_sum"])
def test_npo_loss_by_hand(tiny, reduction):
    model, tok = tiny
    beta = 0.5
    obj = get_registry().build("objective", "npo", {"beta": beta, "retain_weight": 2.0, "reduction": reduction})
    reference = copy.deepcopy(model)
    batch = UnlearnBatch(_batch(tok, FORGET[:2]), _batch(tok, RETAIN[:2]))
    with torch.no_grad():
        at_start = obj.loss(model, batch, reference)
        r = sum(_hf_losses(model, tok, RETAIN[:2])) / 2
        # at θ = θ_ref the forget term is (2/β) log 2
        assert float(at_start.loss) == pytest.approx(2 / beta * math.log(2) + 2.0 * r, rel=1e-5)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        out = obj.loss(model, batch, reference)
        f = _hf_losses(model, tok, FORGET[:2])
        f_ref = _hf_losses(reference, tok, FORGET[:2])
        if reduction == "sequence_sum":
            n = [int((_batch(tok, [ex])["labels"] != -100).sum()) for ex in FORGET[:2]]
            f = [x * k for x, k in zip(f, n, strict=True)]
            f_ref = [x * k for x, k in zip(f_ref, n, strict=True)]
        r = sum(_hf_losses(model, tok, RETAIN[:2])) / 2
    logsig = [math.log(1 / (1 + math.exp(-beta * (a - b)))) for a, b in zip(f, f_ref, strict=True)]
    assert float(out.loss) == pytest.approx(-(2 / beta) * sum(logsig) / 2 + 2.0 * r, rel=1e-5)


def test_ga_and_simnpo_by_hand(tiny):
    model, tok = tiny
    registry = get_registry()
    batch = UnlearnBatch(_batch(tok, FORGET[:3]), _batch(tok, RETAIN[:2]))
    f, r = _hf_losses(model, tok, FORGET[:3]), _hf_losses(model, tok, RETAIN[:2])
    with torch.no_grad():
        ga = registry.build("objective", "ga").loss(model, batch)
        simnpo = registry.build("objective", "simnpo", {"beta": 2.0, "delta": 0.5, "forget_weight": 0.125,
                                                         "retain_weight": 0.5})
        sim = simnpo.loss(model, batch)
    assert float(ga.loss) == pytest.approx(-sum(f) / 3, rel=1e-5)
    logsig = [math.log(1 / (1 + math.exp(-2.0 * (x - 0.5)))) for x in f]
    assert float(sim.loss) == pytest.approx(0.125 * -(2 / 2.0) * sum(logsig) / 3 + 0.5 * sum(r) / 2, rel=1e-5)
    # the defaults are Unlearn-Simple's TOFU config (forget05): β 2.5, npo_coeff 0.1375, grad_diff_coeff 1, γ 0
    defaults = registry.build("objective", "simnpo").config
    assert (defaults.beta, defaults.forget_weight, defaults.retain_weight, defaults.delta) == (2.5, 0.1375, 1.0, 0.0)


def test_po_trains_towards_refusals(tiny):
    model, tok = tiny
    refusals = [Example(ex.prompt, " I don't know.") for ex in FORGET[:2]]
    batch = UnlearnBatch(_batch(tok, FORGET[:2]), _batch(tok, RETAIN[:2]), _batch(tok, refusals))
    with torch.no_grad():
        out = get_registry().build("objective", "po", {"retain_weight": 0.25}).loss(model, batch)
    expected = sum(_hf_losses(model, tok, refusals)) / 2 + 0.25 * sum(_hf_losses(model, tok, RETAIN[:2])) / 2
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="refusal answers"):
        get_registry().build("objective", "po").loss(model, UnlearnBatch(batch.forget, batch.retain))


def test_graddiff_kl_retain_term_by_hand(tiny):
    model, tok = tiny
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    obj = get_registry().build("objective", "graddiff", {"retain_loss": "kl", "retain_weight": 1.0})
    assert obj.needs_reference
    batch = UnlearnBatch(_batch(tok, FORGET[:2]), _batch(tok, RETAIN[:1]))
    with torch.no_grad():
        out = obj.loss(model, batch, reference)
        b = batch.retain
        p_log = torch.log_softmax(model(input_ids=b["input_ids"]).logits[0, :-1], -1)
        q_log = torch.log_softmax(reference(input_ids=b["input_ids"]).logits[0, :-1], -1)
        keep = b["labels"][0, 1:] != -100
        kl = [float((q_log[t].exp() * (q_log[t] - p_log[t])).sum()) for t in range(len(keep)) if keep[t]]
    f = _hf_losses(model, tok, FORGET[:2])
    assert float(out.loss) == pytest.approx(-sum(f) / 2 + sum(kl) / len(kl), rel=1e-4)


def test_wagle_refusal_variant_uses_refusal_gradients(tiny):
    model, tok = tiny
    refusals = [Example(ex.prompt, " I'm not sure.") for ex in FORGET]
    data = AttributionData(model, tok, make_batches(tok, FORGET, 5, 64), make_batches(tok, RETAIN, 5, 64),
                           make_batches(tok, refusals, 5, 64))
    gamma = 1.0
    got = get_registry().build("attribution", "wagle", {"gamma": gamma, "forget_target": "refusal"}).scores(data)
    g_f = _per_sample_grad_sum(model, tok, refusals)
    g_r = _per_sample_grad_sum(model, tok, RETAIN)
    for name, p in model.named_parameters():
        assert torch.allclose(got.scores[name], ((p.detach() - g_r[name] / gamma) * g_f[name]).abs(),
                              rtol=1e-4, atol=1e-7)


def test_rmu_loss_by_hand_and_its_module_filter(tiny):
    model, tok = tiny
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = {"layer": 0, "steering_coeff": 3.0, "retain_weight": 10.0, "seed": 4,
           "update": [r"model\.layers\.0\.mlp\.down_proj\.weight"]}
    rmu = get_registry().build("objective", "rmu", cfg)
    batch = UnlearnBatch(_batch(tok, FORGET[:1]), _batch(tok, RETAIN[:1]))
    with torch.no_grad():
        out = rmu.loss(model, batch, reference)
        u = torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(4))
        control = 3.0 * u / u.norm()
        h_f = model(input_ids=batch.forget["input_ids"], output_hidden_states=True).hidden_states[1][0]
        h_r = model(input_ids=batch.retain["input_ids"], output_hidden_states=True).hidden_states[1][0]
        h_ref = reference(input_ids=batch.retain["input_ids"], output_hidden_states=True).hidden_states[1][0]
    forget = float(((h_f - control) ** 2).mean())
    retain = float(((h_r - h_ref) ** 2).mean())
    assert float(out.loss) == pytest.approx(forget + 10.0 * retain, rel=1e-5)
    with torch.no_grad():  # a second topic is steered to the generator's second draw (RMU's code: one per corpus)
        second = rmu.loss(model, UnlearnBatch(batch.forget, batch.retain, topic=1), reference)
    g = torch.Generator().manual_seed(4)
    first, v = torch.rand(model.config.hidden_size, generator=g), torch.rand(model.config.hidden_size, generator=g)
    assert torch.equal(first, u)
    forget_1 = float(((h_f - 3.0 * v / v.norm()) ** 2).mean())
    assert float(second.loss) == pytest.approx(forget_1 + 10.0 * retain, rel=1e-5) and forget_1 != forget
    assert rmu.updates("model.layers.0.mlp.down_proj.weight") and not rmu.updates("model.layers.0.mlp.up_proj.weight")
    with pytest.raises(ValueError, match="the model has 2 decoder layers"):
        get_registry().build("objective", "rmu", {"layer": 5}).loss(model, batch, reference)


def test_rmu_steers_the_last_layers_own_output_not_the_final_norms(tiny):
    from methods.rmu import activations

    model, tok = tiny
    batch = _batch(tok, FORGET[:2])
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states
        first, last = activations(model, batch, 0), activations(model, batch, 1)
    assert torch.equal(first, hidden[1])  # a layer below the last: its output is the next hidden state
    # the last hidden state is the model's final norm of the last layer's output (WMDP's rmu hooks the output)
    assert torch.allclose(model.model.norm(last), hidden[2], atol=1e-6) and not torch.allclose(last, hidden[2])


def test_rmu_restricts_the_mask_to_its_modules(tiny):
    from harness.learn.update import restrict

    model, _ = tiny
    down = r"model\.layers\.1\.mlp\.down_proj\.weight"
    rmu = get_registry().build("objective", "rmu", {"layer": 1, "update": [down]})
    mask = restrict(None, rmu, model)
    trained = {n for n, m in mask.items() if m.any()}
    assert trained == {"model.layers.1.mlp.down_proj.weight"} and mask["model.layers.1.mlp.down_proj.weight"].all()
    assert restrict(None, get_registry().build("objective", "npo"), model) is None


def test_wanda_mask_matches_the_per_row_rule_written_out(tiny):
    model, tok = tiny
    ratio = 0.5
    batches = make_batches(tok, FORGET, 2, 64)
    got = get_registry().build("attribution", "wanda").scores(
        AttributionData(model, tok, batches, [], ratio=ratio)).mask
    # capture every linear layer's inputs, one sample at a time
    head = model.get_output_embeddings()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    inputs = {n: [] for n in linears}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: inputs[n].append(a[0][0].detach()))
             for n, m in linears.items()]
    with torch.no_grad():
        for ex in FORGET:
            b = _batch(tok, [ex])
            model(input_ids=b["input_ids"])
    for h in hooks:
        h.remove()
    for name, module in linears.items():
        n_in = module.in_features
        norms = torch.zeros(n_in, dtype=torch.float64)
        for x in inputs[name]:  # x: [tokens, in]
            for k in range(n_in):
                norms[k] += sum(float(x[t, k]) ** 2 for t in range(x.shape[0]))
        norms /= len(FORGET)
        metric = module.weight.detach().double().abs() * norms.sqrt()[None, :]
        expected = torch.zeros_like(metric, dtype=torch.bool)
        for row in range(metric.shape[0]):
            order = torch.argsort(metric[row], descending=True)
            expected[row, order[: round(ratio * n_in)]] = True
        assert torch.equal(got[f"{name}.weight"], expected), name
    assert got["model.embed_tokens.weight"].all() and got["model.norm.weight"].all()  # updated densely


def test_lora_trains_adapters_only_and_merges(tmp_path):
    from harness.config import from_dict
    from harness.run import runner
    from harness.run.spec import RunSpec

    spec = from_dict(RunSpec, {
        "task": "tofu-mini", "model": "tiny-llama", "attribution": "lora", "objective": "graddiff",
        "attribution_config": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 1, "batch_size": 20, "lr": 1e-2}, "prepare": {"epochs": 1},
        "task_config": {"utility_limit": 2, "eval_limit": 4, "max_new_tokens": 2, "retain_authors": 1}}, "lora")
    record = runner.execute(spec, tmp_path).to_json()
    assert record["status"] == "finished" and record["mask"]["lora"]["r"] == 2
    # rank-2 adapters on q_proj (12 -> 12) and v_proj (12 -> 6) in 2 layers: 2 * (2*12 + 12*2 + 2*12 + 6*2)
    assert record["mask"]["trainable_params"] == 168
    assert not any("lora" in k for k in record["metrics"])


def test_gradient_snip_and_magnitude_scores_match_autograd(tiny):
    model, tok = tiny
    data = AttributionData(model, tok, make_batches(tok, FORGET, 2, 64), make_batches(tok, RETAIN, 2, 64))
    registry = get_registry()
    gradient = registry.build("attribution", "gradient").scores(data).scores
    snip = registry.build("attribution", "snip").scores(data).scores
    magnitude = registry.build("attribution", "magnitude").scores(data).scores
    g_f = _per_sample_grad_sum(model, tok, FORGET)
    for name, p in model.named_parameters():
        assert torch.allclose(gradient[name], g_f[name].abs(), rtol=1e-4, atol=1e-8), name
        assert torch.allclose(snip[name], (p.detach() * g_f[name]).abs(), rtol=1e-4, atol=1e-8), name
        assert torch.equal(magnitude[name], p.detach().abs()), name


def test_salun_sums_batch_mean_gradients_as_its_generate_mask_does(tiny):
    model, tok = tiny
    data = AttributionData(model, tok, make_batches(tok, FORGET, 4, 64), make_batches(tok, RETAIN, 4, 64))
    got = get_registry().build("attribution", "salun").scores(data).scores
    first, last = _per_sample_grad_sum(model, tok, FORGET[:4]), _per_sample_grad_sum(model, tok, FORGET[4:])
    assert len(FORGET) == 5
    for name in got:  # batches of 4 and 1: Σ_b ∇ mean-loss(b) = G(first 4)/4 + G(last 1)
        assert torch.allclose(got[name], (first[name] / 4 + last[name]).abs(), rtol=1e-4, atol=1e-8), name


def test_grin_is_the_gradient_ratio_of_sample_means(tiny):
    model, tok = tiny
    eps = 1e-3
    data = AttributionData(model, tok, make_batches(tok, FORGET, 4, 64), make_batches(tok, RETAIN[:4], 4, 64))
    got = get_registry().build("attribution", "grin-mask", {"eps": eps}).scores(data).scores
    g_f, g_r = _per_sample_grad_sum(model, tok, FORGET), _per_sample_grad_sum(model, tok, RETAIN[:4])
    for name in got:  # 5 forget samples, 4 retain samples
        want = (g_f[name] / 5).abs() / ((g_r[name] / 4).abs() + eps)
        assert torch.allclose(got[name], want, rtol=1e-4, atol=1e-6), name


def test_random_label_trains_forget_questions_towards_retain_answers(tiny):
    """Each forget question with the answer of the retain example its batch pairs it with (row i, modulo the
    retain rows): the same tokens and labels as encoding that question with that answer, and the loss HF
    computes on them; retain_weight adds the retain NLL (SalUn's classification RL)."""
    from harness.learn.data import swap_answers

    model, tok = tiny
    forget, retain = _batch(tok, FORGET[:3]), _batch(tok, RETAIN[:2])
    swapped = swap_answers(forget, retain)
    relabeled = [Example(FORGET[i].prompt, RETAIN[i % 2].completion) for i in range(3)]
    want = _batch(tok, relabeled)
    for key in ("input_ids", "labels", "attention_mask"):
        real = want["attention_mask"].bool()
        assert torch.equal(swapped[key][real], want[key][real]), key
    batch = UnlearnBatch(forget, retain)
    with torch.no_grad():
        plain = get_registry().build("objective", "random-label").loss(model, batch)
        mixed = get_registry().build("objective", "random-label", {"retain_weight": 0.5}).loss(model, batch)
    assert float(plain.loss) == pytest.approx(sum(_hf_losses(model, tok, relabeled)) / 3, rel=1e-5)
    assert float(mixed.loss) == pytest.approx(float(plain.loss) + 0.5 * sum(_hf_losses(model, tok, RETAIN[:2])) / 2,
                                              rel=1e-5)
