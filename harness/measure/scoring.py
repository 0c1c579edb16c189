"""Teacher-forced scoring: per-token and per-sample negative log-likelihood of completions.

`token_nll` is differentiable and shared by the objectives' losses; `completion_nll` is the batched,
no-grad evaluation path (examples sorted by length to cut padding; right padding does not change a causal
model's numbers, see tests/test_scoring.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from harness import distributed
from harness.api import Batch, Example
from harness.learn.data import IGNORE, collate, encode
from harness.sweeps.progress import Progress


def token_nll(model, batch: Batch, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll[B, T-1], mask[B, T-1]) for next-token prediction on the batch's labelled tokens, the softmax in
    `dtype` (float32 for the unlearning losses; float64 for a reference; attribution: `exact_token_nll`)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].to(dtype)
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    mask = labels != IGNORE
    return nll * mask, mask


def mean_nll(model, batch: Batch, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Token-mean NLL per sample [B] (HF's `outputs.loss` for one sample)."""
    nll, mask = token_nll(model, batch, dtype)
    return nll.sum(1) / mask.sum(1).clamp_min(1)


def exact_token_nll(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_nll` computed so that a memorised token keeps its precision: NLL = log(1 + Σ_{j≠y} e^{l_j − l_y})
    = softplus(logsumexp_{j≠y}(l_j − l_y)). Cross-entropy's log-sum-exp minus the answer's logit is a
    difference of two numbers near 20 for an NLL near 0.01: float32 rounds the sum by ≈ 1e-5 (differently for
    each kernel and batch layout), ≈ 0.5% of the NLL and of its gradient p − 1, enough to flip the weights near
    an attribution's threshold. Here the small sum is computed directly, and its gradient p_j = e^{l_j − l_y} /
    (1 + S) and −S / (1 + S) as well: float64's precision at float32's memory (benchmarks/attribution_precision.py)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    answer = labels.clamp_min(0).unsqueeze(-1)
    others = (logits - logits.gather(-1, answer)).scatter_(-1, answer, float("-inf"))
    nll = F.softplus(torch.logsumexp(others, -1))
    mask = labels != IGNORE
    return nll * mask, mask


def exact_mean_nll(model, batch: Batch) -> torch.Tensor:
    """`mean_nll` from `exact_token_nll`: the attribution losses' (harness.learn.attribution.summed_gradients)."""
    nll, mask = exact_token_nll(model, batch)
    return nll.sum(1) / mask.sum(1).clamp_min(1)


def sum_nll(model, batch: Batch) -> torch.Tensor:
    """Sequence-summed NLL per sample [B] (= -log p(completion | prompt))."""
    nll, _ = token_nll(model, batch)
    return nll.sum(1)


def completion_nll(model, tokenizer, examples: Sequence[Example], batch_size: int = 16,
                   max_length: int = 512) -> np.ndarray:
    """Token-mean NLL of each example's completion given its prompt, in input order (under a multi-process
    launch, each process scores its share and every process gets all the numbers)."""
    return np.asarray(distributed.map_sharded(
        lambda part: _completion_nll(model, tokenizer, part, batch_size, max_length), examples), dtype=np.float64)


@torch.no_grad()
def _completion_nll(model, tokenizer, examples: Sequence[Example], batch_size: int,
                    max_length: int) -> np.ndarray:
    encoded = [encode(tokenizer, ex, max_length) for ex in examples]
    out = np.empty(len(encoded), dtype=np.float64)
    options = _one_token_options(encoded)
    for prompts in _batches(sorted(options, key=len), batch_size):  # one pass per shared prompt
        batch = collate([(list(p), [IGNORE] * len(p)) for p in prompts], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device)).logits
        logp = logits[torch.arange(len(prompts)), [len(p) - 1 for p in prompts]].float().log_softmax(-1).cpu()
        for row, p in enumerate(prompts):
            for i in options[p]:
                out[i] = -float(logp[row, encoded[i][0][-1]])
    done = {i for idx in options.values() for i in idx}
    order = sorted((i for i in range(len(encoded)) if i not in done), key=lambda i: len(encoded[i][0]))
    with Progress("scoring", len(order), "answers") as progress:
        for idx in _batches(order, batch_size):
            batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out[idx] = mean_nll(model, batch).double().cpu().numpy()
            progress.advance(len(idx))
    return out


def _one_token_options(encoded: list[tuple[list[int], list[int]]]) -> dict[tuple[int, ...], list[int]]:
    """Examples whose completion is one token (no end-of-sequence token), grouped by their prompt where several
    share it, as a multiple-choice question's letters do: each group needs one forward pass, not one each."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ids, labels) in enumerate(encoded):
        if len(ids) > 1 and labels[-1] != IGNORE and all(x == IGNORE for x in labels[:-1]):
            groups.setdefault(tuple(ids[:-1]), []).append(i)
    return {p: idx for p, idx in groups.items() if len(idx) > 1}


def _batches(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def text_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 16,
                  max_length: int = 2048) -> list[np.ndarray]:
    """Log-probability of every token of each text after its first, given the tokens before (one
    teacher-forced pass, texts cut to `max_length` tokens), in input order. Batched and right-padded;
    padding does not change the numbers (tests/test_scoring.py). Sharded across processes like
    `completion_nll`."""
    return distributed.map_sharded(lambda part: _text_logprobs(model, tokenizer, part, batch_size, max_length), texts)


@torch.no_grad()
def _text_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int) -> list[np.ndarray]:
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[np.ndarray] = [np.empty(0)] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([(encoded[i], encoded[i]) for i in idx], tokenizer.pad_token_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        nll, _ = token_nll(model, batch)
        for row, i in enumerate(idx):
            out[i] = -nll[row, : len(encoded[i]) - 1].double().cpu().numpy()
    return out


@dataclass
class TokenStats:
    """Per labelled token of one example, in order: log p of the label, whether the label is the argmax, and
    the mean and variance of log p over the vocabulary under the model's own distribution (Min-K%++)."""

    labels: np.ndarray
    logp: np.ndarray
    hit: np.ndarray
    mu: np.ndarray
    var: np.ndarray


@torch.no_grad()
def token_stats(model, tokenizer, examples: Sequence[Example], batch_size: int = 8,
                max_length: int = 512) -> list[TokenStats]:
    """`TokenStats` of every example's labelled tokens (completion and EOS) from one teacher-forced pass per
    batch, in input order (membership inference and extraction, harness/measure/probes)."""
    encoded = [encode(tokenizer, ex, max_length) for ex in examples]
    out: list[TokenStats] = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        batch = {k: v.to(model.device) for k, v in collate(rows, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        for row in range(len(rows)):
            keep = labels[row] != IGNORE
            logp = F.log_softmax(logits[row][keep].float(), dim=-1)
            target = labels[row][keep]
            p = logp.exp()
            mu = (p * logp).sum(-1)
            out.append(TokenStats(target.cpu().numpy(), logp.gather(-1, target[:, None])[:, 0].double().cpu().numpy(),
                                  (logp.argmax(-1) == target).cpu().numpy(), mu.double().cpu().numpy(),
                                  ((p * logp.square()).sum(-1) - mu.square()).double().cpu().numpy()))
    return out
