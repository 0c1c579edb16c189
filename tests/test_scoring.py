import numpy as np
import torch

from harness.api import Example
from harness.learn.data import collate, encode
from harness.measure.scoring import completion_nll, mean_nll

EXAMPLES = [
    Example("Question: Who wrote Hamlet?\nAnswer:", " William Shakespeare"),
    Example("Question: What is the capital of France, the country in western Europe?\nAnswer:",
            " Paris is the capital of France."),
    Example("Q:", " A much longer answer that goes on for a while to make the padding matter a lot."),
]


def test_mean_nll_matches_hf_loss(tiny):
    model, tok = tiny
    ids, labels = encode(tok, EXAMPLES[1], 128)
    batch = collate([(ids, labels)], tok.pad_token_id)
    with torch.no_grad():
        hf = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        ours = mean_nll(model, batch)
    assert torch.allclose(ours[0], hf, atol=1e-6)


def test_batched_equals_one_at_a_time(tiny):
    model, tok = tiny
    batched = completion_nll(model, tok, EXAMPLES, batch_size=3)
    single = np.array([completion_nll(model, tok, [ex], batch_size=1)[0] for ex in EXAMPLES])
    assert np.allclose(batched, single, atol=1e-5)


def test_labels_cover_completion_and_eos_only(tiny):
    _, tok = tiny
    ids, labels = encode(tok, EXAMPLES[0], 128)
    n_prompt = len(tok(EXAMPLES[0].prompt)["input_ids"])
    assert all(x == -100 for x in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id


TEXTS = ["A short one.", "A much longer text that goes on for a while, so that padding matters a great deal here.",
         "Middle length text, with a comma."]


def test_text_logprobs_batched_equals_one_at_a_time_and_hand(tiny):
    from harness.measure.scoring import text_logprobs

    model, tok = tiny
    batched = text_logprobs(model, tok, TEXTS, batch_size=3)
    single = [text_logprobs(model, tok, [t], batch_size=1)[0] for t in TEXTS]
    for b, s, t in zip(batched, single, TEXTS, strict=True):
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            hand = model(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0].double().numpy()
        assert b.shape == (ids.shape[1] - 1,)
        assert np.allclose(b, s, atol=1e-5) and np.allclose(b, hand, atol=1e-5)


def test_letters_sharing_a_prompt_score_as_if_alone(tiny):
    """Multiple-choice letters (one token, no EOS) after one prompt are read from a single pass; the numbers
    are those of scoring each example on its own, mixed with ordinary examples in any order."""
    model, tok = tiny
    prompts = ["Which is red?\nA. sky\nB. blood\nAnswer:", "Pick one.\nA. x\nB. y\nAnswer:"]
    letters = [Example(p, f" {c}", eos=False) for p in prompts for c in "ABCD"]
    mixed = [letters[0], EXAMPLES[0], *letters[1:5], EXAMPLES[2], *letters[5:]]
    together = completion_nll(model, tok, mixed, batch_size=3)
    alone = np.array([completion_nll(model, tok, [ex], batch_size=1)[0] for ex in mixed])
    assert np.allclose(together, alone, atol=1e-5)
    ids, labels = encode(tok, letters[1], 128)
    assert sum(x != -100 for x in labels) == 1 and ids[-1] != tok.eos_token_id


def _memorised(tiny):
    """The tiny model trained (60 seeded Adam steps) until it has memorised two examples, and their batch."""
    model, tok = tiny
    batch = collate([encode(tok, ex, 128) for ex in EXAMPLES[:2]], tok.pad_token_id)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        opt.zero_grad()
        mean_nll(model, batch).mean().backward()
        opt.step()
    return model, batch


def test_attribution_nll_is_exact_where_float32_rounds(tiny):
    """A target that has memorised its examples (NLL ≈ 0.007: log-sum-exp minus the answer's logit, a small
    difference of two larger numbers): the attribution loss (log(1 + Σ_{j≠y} e^{l_j − l_y}) in float32) and the
    float64 cross-entropy equal the NLL computed by hand from the same logits with math.fsum, to 2e-6 and 1e-12
    relative; float32 cross-entropy, the unlearning losses' own, is off by its rounding of the sum (measured
    5e-5 and 4e-4 relative here, at a vocabulary of 1,020): ten times more at least."""
    import math

    from harness.measure.scoring import exact_mean_nll

    model, batch = _memorised(tiny)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        exact, rounded = exact_mean_nll(model, batch), mean_nll(model, batch)
        double = mean_nll(model, batch, torch.float64)
    errors, exact_errors = [], []
    for i in range(2):
        nll = []
        for t in range(batch["labels"].shape[1] - 1):
            y = int(batch["labels"][i, t + 1])
            if y >= 0:
                row = [float(v) for v in logits[i, t]]
                top = max(row)
                nll.append(top + math.log(math.fsum(math.exp(v - top) for v in row)) - row[y])
        hand = math.fsum(nll) / len(nll)
        assert hand < 0.05  # memorised
        assert abs(float(double[i]) - hand) < 1e-12 * hand
        exact_errors.append(abs(float(exact[i]) - hand) / hand)
        errors.append(abs(float(rounded[i]) - hand) / hand)
    assert max(exact_errors) < 2e-6 and max(errors) > 10 * max(exact_errors)


def test_attribution_gradients_are_float64s_at_float32s_memory(tiny):
    """On the same memorised model, the gradient of the attribution loss is float64 cross-entropy's to 1e-5
    (measured 3e-7); float32 cross-entropy's is off by more than 1e-4 (measured 2e-3)."""
    from harness.measure.scoring import exact_mean_nll

    model, batch = _memorised(tiny)

    def gradient(loss) -> torch.Tensor:
        model.zero_grad()
        loss(model, batch).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    double = gradient(lambda m, b: mean_nll(m, b, torch.float64))
    exact, rounded = gradient(exact_mean_nll), gradient(mean_nll)
    assert float((exact - double).norm() / double.norm()) < 1e-5
    assert float((rounded - double).norm() / double.norm()) > 1e-4
