"""Plain-text corpora for copyright-style tasks: reading them, cutting them into word chunks, and scoring
greedy continuations. Chunks are cut by whitespace-separated words, not tokens, so every model unlearns and
is scored on the same text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.io import read_jsonl


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    """Texts of a corpus file: .txt (the whole file, one text), .json (a list of strings, or of objects
    with `text`, or with `prompt` and `gt` joined) or .jsonl (objects with `text`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus file not found: {path}")
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix == ".jsonl":
        return [r["text"] for r in read_jsonl(path, ("text",))][:limit]
    data = _json_list(path, "texts")
    return [_text(item, path, i) for i, item in enumerate(data[:limit])]


def _json_list(path: Path, of: str) -> list[Any]:
    """The JSON list in `path`; bad JSON or another top-level type names the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {of}")
    return data


def _text(item: Any, path: Path, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    if isinstance(item, dict) and isinstance(item.get("prompt"), str) and isinstance(item.get("gt"), str):
        return item["prompt"] + item["gt"]
    raise DataError(f"{path}, item {index}: expected a string or an object with 'text' (or 'prompt' "
                    "and 'gt')")


def read_rows(path: Path, required: tuple[str, ...], limit: int | None = None) -> list[dict[str, Any]]:
    """Objects with the `required` fields from a JSON list or a JSON Lines file; errors name the item."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".jsonl":
        return read_jsonl(path, required)[:limit]
    rows = _json_list(path, "objects")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not set(required) <= set(r):
            raise DataError(f"{path}, item {i}: needs fields {', '.join(required)}")
    return rows[:limit]


def read_qa(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    """{question, answer} pairs from a JSON list or JSON Lines file."""
    return [{"question": str(r["question"]), "answer": str(r["answer"])}
            for r in read_rows(path, ("question", "answer"), limit)]


def chunks(texts: Sequence[str], words: int, per_text: int | None = None) -> list[str]:
    """Consecutive chunks of `words` words of each text (the last may be shorter), at most `per_text`."""
    out = []
    for text in texts:
        tokens = text.split()
        pieces = [" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]
        out += pieces[:per_text]
    return [p for p in out if p]


def split_prompt(chunk: str, prompt_words: int) -> tuple[str, str]:
    """(first `prompt_words` words, the rest with its leading space): a continuation prompt and its truth."""
    tokens = chunk.split()
    return " ".join(tokens[:prompt_words]), " " + " ".join(tokens[prompt_words:])


def truncate_tokens(tokenizer, text: str, n: int, special: bool = False) -> str:
    """`text` cut to its first `n` tokens; with `special`, counting the tokens the tokenizer adds (BOS), as
    MUSE cuts VerbMem's ground truth (`metrics/verbmem.py`: a Llama-2 truth keeps 127 text tokens of 128)."""
    ids = tokenizer(text, add_special_tokens=special)["input_ids"][:n]
    return tokenizer.decode(ids, skip_special_tokens=True)
