import numpy as np
import torch

from harness.api import Example
from harness.data import collate, encode
from harness.scoring import completion_nll, mean_nll

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
    from harness.scoring import text_logprobs

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
