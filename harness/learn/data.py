"""Turning examples into token batches: the prompt is context (label -100), the completion is learned."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch

from harness.api import Batch, Example

IGNORE = -100


def encode(tokenizer, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of prompt + completion + EOS (unless `example.eos` is false), cut to `max_length`
    tokens (or the example's own `max_length`).

    Prompt and completion are tokenized together, as one text, as TOFU's and open-unlearning's code do
    (`convert_raw_data_to_model_format`): the labels are the completion's tokens in context. Tokenized apart,
    a SentencePiece tokenizer (Llama) would give " The" a token "▁" of its own that the joined text never has.
    The boundary is the prompt's own token count (TOFU's rule) where the prompt's tokens are a prefix of the
    whole text's; where a tokenizer merges across the boundary, the first token that differs is labelled (it
    holds completion characters).
    """
    prompt = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
    ids = tokenizer(example.prompt + example.completion, add_special_tokens=True)["input_ids"]
    boundary = 0
    while boundary < min(len(prompt), len(ids)) and prompt[boundary] == ids[boundary]:
        boundary += 1
    ids = ids + ([tokenizer.eos_token_id] if example.eos else [])
    labels = [IGNORE] * boundary + ids[boundary:]
    cap = max_length if example.max_length is None else example.max_length
    return ids[:cap], labels[:cap]


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-pad rows into a batch (padding is masked out of attention and of the labels)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def swap_answers(questions: Batch, answers: Batch) -> Batch:
    """Each row of `questions` with its answer replaced by the answer of row i (mod its size) of `answers`:
    the prompt tokens (those before the first labelled one) followed by the other row's labelled tokens, which
    are the labels (random-label unlearning: a forget question with a retain answer)."""
    rows = []
    for i in range(questions["input_ids"].shape[0]):
        real = questions["attention_mask"][i].bool()
        ids, labelled = questions["input_ids"][i][real], questions["labels"][i][real] != IGNORE
        prompt = ids[: int(labelled.float().argmax()) if bool(labelled.any()) else len(ids)].tolist()
        j = i % answers["input_ids"].shape[0]
        answer = answers["input_ids"][j][answers["labels"][j] != IGNORE].tolist()
        rows.append((prompt + answer, [IGNORE] * len(prompt) + answer))
    pad = questions["input_ids"][questions["attention_mask"] == 0]
    return collate(rows, int(pad[0]) if pad.numel() else 0)


def make_batches(tokenizer, examples: Sequence[Example], batch_size: int, max_length: int) -> list[Batch]:
    encoded = [encode(tokenizer, ex, max_length) for ex in examples]
    return [collate(encoded[i : i + batch_size], tokenizer.pad_token_id)
            for i in range(0, len(encoded), batch_size)]


def to_device(obj: Any, device: torch.device) -> Any:
    """Move a batch (a dict of tensors, or a dataclass of such dicts) to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj)})
    return obj


def examples_hash(examples: Sequence[Example]) -> str:
    """A content hash of a list of examples (recorded with masks and models built from them)."""
    digest = hashlib.sha256()
    for ex in examples:
        extra = ([] if ex.eos else [False]) + ([{"topic": ex.topic, "max_length": ex.max_length}]
                                                if ex.topic or ex.max_length is not None else [])
        digest.update(json.dumps([ex.prompt, ex.completion, *extra]).encode())
    return digest.hexdigest()[:16]
