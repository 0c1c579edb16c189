"""MUSE-News (Shi et al. 2024): unlearning BBC news articles; VerbMem, KnowMem and PrivLeak as in
docs/metrics.md (which lists where we differ from the MUSE reference code).

`muse-news` is the MUSE setting (its Llama-2-7B target and retrained models from the hub, the full corpora
under `data_dir`); `muse-news-mini` builds its own target on this CPU from short excerpts and QA pairs of
the bundled copy (tasks/data/muse_news, CC-BY-4.0, see its SOURCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from harness.api import EvalContext, Evaluation, Example, Metric, Task, TaskConfig
from harness.config import option
from harness.hookspecs import hookimpl
from harness.measure import metrics, scoring
from tasks import text

KNOWMEM_STOP = ["\n\n", "\nQuestion", "Question:"]


def bundled_dir() -> Path:
    return Path(str(files("tasks") / "data" / "muse_news"))


@dataclass
class MuseConfig(TaskConfig):
    data_dir: str | None = option(None, "folder in MUSE-News layout (raw/, verbmem/, knowmem/, privleak/); "
                                        "null: the bundled partial copy")
    forget_file: str = option("raw/forget.json", "forget corpus, relative to data_dir")
    retain_file: str = option("raw/retain1.json", "retain corpus, relative to data_dir")
    texts_limit: int | None = option(None, "use only the first N texts of each corpus and MIA file")
    chunk_words: int = option(1500, "unlearning/fine-tuning texts are cut into chunks of this many words")
    chunks_per_text: int | None = option(None, "keep at most N chunks of each text; null: all")
    qa_in_training: bool = option(False, "also train on the KnowMem QA pairs (the mini target learns them)")
    qa_limit: int | None = option(None, "use only the first N KnowMem questions of each split")
    verbmem_file: str | None = option("verbmem/forget.json", "VerbMem {prompt, gt} file; null: split the "
                                                            "forget chunks in two")
    verbmem_limit: int | None = option(None, "score only the first N VerbMem prompts")
    verbmem_tokens: int = option(128, "VerbMem generation length; the ground truth is cut to it")
    knowmem_tokens: int = option(32, "KnowMem answer generation length")
    knowmem_space: bool = option(True, "end the KnowMem prompt with 'Answer: ' (a trailing space), as MUSE's "
                                       "metrics/knowmem.py does; false: 'Answer:' (the answer's own leading "
                                       "space then starts the generation, as the mini target learned it)")
    mia_forget_file: str | None = option("privleak/forget.json", "member texts for PrivLeak; null: the "
                                                                  "forget chunks")
    mia_holdout_file: str = option("privleak/holdout.json", "non-member texts for PrivLeak")
    mia_k: float = option(0.4, "k of Min-K% (fraction of lowest-probability tokens averaged)")
    max_length: int = option(2048, "token cap for training and scoring sequences")
    eval_batch_size: int = option(8, "batch size for scoring and generation")
    target_model: str | None = option("muse-bench/MUSE-News_target", "model that learned the corpus; null: build")
    retain_model: str | None = option("muse-bench/MUSE-News_retrain", "model trained without the forget "
                                                                       "corpus; null: build")

    def validate(self) -> None:
        if not 0.0 < self.mia_k <= 1.0:
            raise ValueError(f"mia_k must be in (0, 1], got {self.mia_k}")
        if self.chunk_words < 4:
            raise ValueError(f"chunk_words must be at least 4, got {self.chunk_words}")


@dataclass
class MuseMiniConfig(MuseConfig):
    forget_file: str = option("privleak/forget.json", "forget corpus, relative to data_dir")
    retain_file: str = option("privleak/retain2.json", "retain corpus, relative to data_dir")
    texts_limit: int | None = option(16, "use only the first N texts of each corpus and MIA file")
    chunk_words: int = option(64, "unlearning/fine-tuning texts are cut into chunks of this many words")
    chunks_per_text: int | None = option(1, "keep at most N chunks of each text; null: all")
    qa_in_training: bool = option(True, "also train on the KnowMem QA pairs (the mini target learns them)")
    qa_limit: int | None = option(16, "use only the first N KnowMem questions of each split")
    verbmem_file: str | None = option(None, "VerbMem {prompt, gt} file; null: split the forget chunks in two")
    verbmem_tokens: int = option(32, "VerbMem generation length; the ground truth is cut to it")
    knowmem_tokens: int = option(16, "KnowMem answer generation length")
    knowmem_space: bool = option(False, "end the KnowMem prompt with 'Answer: ' as MUSE does; false: 'Answer:', "
                                        "the format the mini target learned its QA pairs in")
    mia_forget_file: str | None = option(None, "member texts for PrivLeak; null: the forget chunks")
    max_length: int = option(128, "token cap for training and scoring sequences")
    target_model: str | None = option(None, "model that learned the corpus; null: build")
    retain_model: str | None = option(None, "model trained without the forget corpus; null: build")


class MuseNews(Task):
    """MUSE-News: forget BBC articles; VerbMem, KnowMem (forget and retain) and PrivLeak."""

    name = "muse-news"
    # MUSE's relearning (Unlearn-Smooth `MUSE/baselines/run_muse_relearn.sh`: lr 1e-5, batch 4, News 100, 125 or
    # 150 steps on the forget text): the first
    relearn_settings: ClassVar[dict[str, Any]] = {"lr": 1e-5, "batch_size": 4, "steps": 100}
    Config = MuseConfig
    headline = ("verbmem_f", "knowmem_r")

    @classmethod
    def rehearsal_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Two texts, questions and VerbMem prompts, two generated tokens; the bundled mini copy where the file
        names no folder of its own."""
        return {"texts_limit": 2, "qa_limit": 2, "verbmem_limit": 2, "verbmem_tokens": 2, "knowmem_tokens": 2,
                "max_length": 128}

    def _path(self, rel: str) -> Path:
        return Path(self.config.data_dir or bundled_dir()) / rel

    def _chunks(self, rel: str) -> list[str]:
        c = self.config
        return text.chunks(text.read_texts(self._path(rel), c.texts_limit), c.chunk_words, c.chunks_per_text)

    def _qa_path(self, split: Literal["forget", "retain2"], suffix: str = "qa") -> Path:
        """knowmem/<split>_<suffix>.json; the retain QA also under the name MUSE's `load_data.py` writes
        (`retain_qa.json`, `retain_qa_icl.json`), where the older `retain2_*` file is absent."""
        path = self._path(f"knowmem/{split}_{suffix}.json")
        other = self._path(f"knowmem/retain_{suffix}.json")
        return other if split == "retain2" and not path.exists() and other.exists() else path

    def _qa(self, split: Literal["forget", "retain2"]) -> list[dict[str, str]]:
        return text.read_qa(self._qa_path(split), self.config.qa_limit)

    def _qa_examples(self, split: Literal["forget", "retain2"]) -> list[Example]:
        if not self.config.qa_in_training:
            return []
        return [Example(f"Question: {r['question']}\nAnswer:", f" {r['answer']}") for r in self._qa(split)]

    def forget_examples(self) -> list[Example]:
        return [Example("", c) for c in self._chunks(self.config.forget_file)] + self._qa_examples("forget")

    def retain_examples(self) -> list[Example]:
        return [Example("", c) for c in self._chunks(self.config.retain_file)] + self._qa_examples("retain2")

    def finetune_examples(self, which: Literal["target", "retain"]) -> list[Example]:
        retain = self.retain_examples()
        return retain + self.forget_examples() if which == "target" else retain

    def provided_model(self, which: Literal["target", "retain"]) -> str | None:
        return self.config.target_model if which == "target" else self.config.retain_model

    # evaluation ---------------------------------------------------------------------------------------

    def _verbmem_items(self) -> list[tuple[str, str]]:
        c = self.config
        if c.verbmem_file is None:
            items = [text.split_prompt(ch, c.chunk_words // 2) for ch in self._chunks(c.forget_file)]
        else:
            rows = text.read_rows(self._path(c.verbmem_file), ("prompt", "gt"))
            items = [(r["prompt"], r["gt"]) for r in rows]
        return items[: c.verbmem_limit]

    def _mia_texts(self) -> tuple[list[str], list[str]]:
        c = self.config
        members = (self._chunks(c.forget_file) if c.mia_forget_file is None
                   else text.read_texts(self._path(c.mia_forget_file), c.texts_limit))
        holdout = text.read_texts(self._path(c.mia_holdout_file), c.texts_limit)
        if c.mia_forget_file is None:  # members are chunks: cut the non-members the same way
            holdout = text.chunks(holdout, c.chunk_words, c.chunks_per_text)
        return members, holdout

    def knowmem_prompts(self, split: Literal["forget", "retain2"]) -> list[str]:
        """MUSE's KnowMem prompts: the split's in-context QA pairs, then the question (metrics/knowmem.py)."""
        icl = text.read_qa(self._qa_path(split, "qa_icl"))
        shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)
        end = "Answer: " if self.config.knowmem_space else "Answer:"
        return [f"{shots}Question: {r['question']}\n{end}" for r in self._qa(split)]

    def _knowmem(self, model, tokenizer, split: Literal["forget", "retain2"], ctx: EvalContext) -> np.ndarray:
        answers = ctx.generate(model, tokenizer, self.knowmem_prompts(split), self.config.knowmem_tokens,
                               stop=KNOWMEM_STOP)
        return metrics.rouge_l_f1([r["answer"] for r in self._qa(split)], answers)

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> Evaluation:
        c = self.config
        items = self._verbmem_items()
        truths = [text.truncate_tokens(tokenizer, gt, c.verbmem_tokens, special=True) for _, gt in items]
        gens = ctx.generate(model, tokenizer, [p for p, _ in items], c.verbmem_tokens)
        verbmem = metrics.rouge_l_f1(truths, gens)

        members, holdout = self._mia_texts()
        lp = scoring.text_logprobs(model, tokenizer, members + holdout, ctx.batch_size, c.max_length)
        scores = [metrics.min_k_score(x, c.mia_k) for x in lp]
        auc = metrics.mia_auc(scores[: len(members)], scores[len(members):])
        reference = (ctx.reference_stats or {}).get("mia_auc")

        out = {
            "verbmem_f": Metric(float(verbmem.mean()), "lower", "forget"),
            "knowmem_f": Metric(float(self._knowmem(model, tokenizer, "forget", ctx).mean()),
                                "lower", "forget"),
            "knowmem_r": Metric(float(self._knowmem(model, tokenizer, "retain2", ctx).mean()),
                                "higher", "utility"),
            "privleak": Metric(metrics.privleak(auc, reference) if reference else None, "zero", "forget"),
            "mia_auc": Metric(auc, "higher", "info"),
        }
        stats: dict[str, Any] = {"mia_auc": auc, "mia_scores_forget": scores[: len(members)],
                                 "mia_scores_holdout": scores[len(members):]}
        samples = [{"prompt": p[-200:], "truth": t, "generation": g, "rouge_l_f1": float(s)}
                   for (p, _), t, g, s in zip(items, truths, gens, verbmem, strict=True)]
        return Evaluation(out, stats, samples)


class MuseNewsMini(MuseNews):
    """MUSE-News sized for a CPU: 16 article excerpts and 16 QA pairs per side, a target built here."""

    name = "muse-news-mini"
    Config = MuseMiniConfig


@hookimpl
def register_tasks(register) -> None:
    register(MuseNews)
    register(MuseNewsMini)
