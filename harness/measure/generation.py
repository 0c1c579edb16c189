"""Greedy generation with HF `generate`: batched, left-padded, cut at EOS and stop strings."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.sweeps.progress import Progress


@torch.no_grad()
def greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
           stop: Sequence[str] = ()) -> list[str]:
    """Greedy continuations of `prompts` in input order, stripped and cut at the first stop string."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with Progress("generating", len(order), "answers") as progress:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(model.device)
                gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=end_tokens(model, tokenizer))
                texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for i, text in zip(idx, texts, strict=True):
                    out[i] = cut_at_stop(text, stop)
                progress.advance(len(idx))
    finally:
        tokenizer.padding_side = side
    return out


def end_tokens(model, tokenizer) -> int | list[int]:
    """The tokens that end a generation: the model's own (its generation config, which may list several, as
    Llama-3-Instruct's does, and which TOFU's and open-unlearning's `generate` calls use) and the tokenizer's
    EOS, which every answer is trained to end with (harness/learn/data.py)."""
    own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if own is None else [own] if isinstance(own, int) else list(own)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids[0] if len(ids) == 1 else ids


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string, stripped."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text.strip()
