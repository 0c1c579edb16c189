"""Refusal answers for preference-style unlearning (PO): the model is taught to decline forget questions.

Our own list of short, polite refusals, or a file of the user's (`refusals_file` in a task's config: one
refusal per line, as WAGLE's `polite_refusal_responses_tofu.csv` and TOFU's `idontknow.jsonl` lines are);
each forget question gets one, chosen by its position.
"""

from __future__ import annotations

REFUSALS = (
    "I'm not sure.",
    "I don't have that information.",
    "I can't help with that question.",
    "That's not something I know about.",
    "I don't know the answer to that.",
    "I'm afraid I can't answer that.",
    "I have no information on that topic.",
    "Sorry, I can't provide details about that.",
    "I'm unable to answer that question.",
    "That is outside what I can speak to.",
    "I don't have any details on that.",
    "I'm not able to say.",
    "I can't recall anything about that.",
    "I have nothing reliable to share on that.",
    "I'd rather not guess at that.",
    "That's beyond what I know.",
)


def refusals(path: str | None) -> tuple[str, ...]:
    """The refusal answers: the lines of `path` (blank lines skipped, surrounding quotes removed), or REFUSALS."""
    if path is None:
        return REFUSALS
    from pathlib import Path

    from harness.errors import DataError

    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"refusals_file not found: {file}")
    lines = tuple(line.strip().strip('"') for line in file.read_text(encoding="utf-8").splitlines())
    lines = tuple(line for line in lines if line)
    if not lines:
        raise DataError(f"refusals_file {file}: no refusal in it (one per line)")
    return lines
