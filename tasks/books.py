"""Copyright removal on a book the user has (Harry Potter, MUSE-Books): we never ship book text, the config
points to it on disk. Metrics as in WAGLE's copyright evaluation: greedy continuations of prompts compared
with the true text by BLEU and ROUGE-L recall, on the forget text and on a retain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from harness.api import EvalContext, Evaluation, Example, Metric, Task, TaskConfig
from harness.config import option
from harness.errors import ConfigError
from harness.hookspecs import hookimpl
from harness.measure import metrics
from tasks import text


@dataclass
class BooksConfig(TaskConfig):
    forget_text: str = option("", "the book to unlearn: .txt, .json list of strings, or .jsonl with 'text'")
    retain_text: str = option("", "text to keep (another book, MUSE-Books retain1), same formats")
    forget_prompts: str | None = option(None, "JSON Lines {prompt, response} to score (WAGLE's hp_qa files); "
                                              "null: continuations cut from the forget text")
    chunk_words: int = option(200, "texts are cut into chunks of this many words for unlearning")
    texts_limit: int | None = option(None, "use only the first N chunks of each text")
    prompt_words: int = option(50, "continuation prompts cut from a text: this many words, the rest is truth")
    eval_limit: int | None = option(100, "score only the first N prompts of each side")
    max_new_tokens: int = option(128, "greedy continuation length (WAGLE: up to 600 tokens)")
    max_length: int = option(512, "token cap for training sequences")
    eval_batch_size: int = option(8, "batch size for generation")
    target_model: str | None = option(None, "model that learned the book (path or hub id); null: build it")
    retain_model: str | None = option(None, "model that never saw it; null: build it")

    def validate(self) -> None:
        if not self.forget_text or not self.retain_text:
            raise ValueError("forget_text and retain_text must name files (we ship no book text)")
        if not 0 < self.prompt_words < self.chunk_words:
            raise ValueError(f"prompt_words must be in (0, chunk_words={self.chunk_words}), got {self.prompt_words}")


class Books(Task):
    """A book the user has on disk (Harry Potter / MUSE-Books): BLEU and ROUGE-L of continuations."""

    name = "copyright-books"
    # MUSE-Books' relearning (Unlearn-Smooth `MUSE/baselines/run_muse_relearn.sh`: lr 1e-5, batch 4, 50, 75 or
    # 100 steps on the forget text): the first
    relearn_settings: ClassVar[dict[str, Any]] = {"lr": 1e-5, "batch_size": 4, "steps": 50}
    Config = BooksConfig
    headline = ("forget_rouge", "retain_rouge")

    def _chunks(self, source: str) -> list[str]:
        c = self.config
        return text.chunks(text.read_texts(Path(source).expanduser()), c.chunk_words)[: c.texts_limit]

    def forget_examples(self) -> list[Example]:
        return [Example("", ch) for ch in self._chunks(self.config.forget_text)]

    def retain_examples(self) -> list[Example]:
        return [Example("", ch) for ch in self._chunks(self.config.retain_text)]

    def finetune_examples(self, which: Literal["target", "retain"]) -> list[Example]:
        retain = self.retain_examples()
        return retain + self.forget_examples() if which == "target" else retain

    def provided_model(self, which: Literal["target", "retain"]) -> str | None:
        return self.config.target_model if which == "target" else self.config.retain_model

    def _pairs(self, side: Literal["forget", "retain"]) -> list[tuple[str, str]]:
        c = self.config
        if side == "forget" and c.forget_prompts:
            rows = text.read_rows(Path(c.forget_prompts).expanduser(), ("prompt", "response"))
            pairs = [(r["prompt"], r["response"]) for r in rows]
        else:
            source = c.forget_text if side == "forget" else c.retain_text
            pairs = [text.split_prompt(ch, c.prompt_words) for ch in self._chunks(source)
                     if len(ch.split()) > c.prompt_words]
        if not pairs:
            raise ConfigError(f"copyright-books: no {side} prompts (texts shorter than prompt_words?)")
        return pairs[: c.eval_limit]

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> Evaluation:
        out: dict[str, Metric] = {}
        samples = []
        for side in ("forget", "retain"):
            pairs = self._pairs(side)
            gens = ctx.generate(model, tokenizer, [p for p, _ in pairs], self.config.max_new_tokens)
            truths = [text.truncate_tokens(tokenizer, t, self.config.max_new_tokens) for _, t in pairs]
            bleu = metrics.bleu(truths, gens)
            rouge = metrics.rouge_l_recall(truths, gens)
            direction, group = ("lower", "forget") if side == "forget" else ("higher", "utility")
            out[f"{side}_bleu"] = Metric(float(np.mean(bleu)), direction, group)
            out[f"{side}_rouge"] = Metric(float(np.mean(rouge)), direction, group)
            if side == "forget":
                samples = [{"prompt": p[-200:], "truth": t, "generation": g} for (p, _), t, g in
                           zip(pairs, truths, gens, strict=True)]
        return Evaluation(out, {}, samples)


@hookimpl
def register_tasks(register) -> None:
    register(Books)
