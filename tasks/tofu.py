"""TOFU: unlearning fictitious authors (Maini et al. 2024), with metrics as in docs/metrics.md.

Two registered configurations: `tofu` (the paper setting: forget10 / retain90, full evaluation) and
`tofu-mini` (forget01 plus a few retain authors, sized for a 2-core CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.api import EvalContext, Evaluation, Example, Metric, ProbeSets, Task, TaskConfig
from harness.config import option
from harness.hookspecs import hookimpl
from harness.io import read_jsonl
from harness.measure import metrics, scoring

QA_PER_AUTHOR = 20
FORGET_SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
STOP_SPLITS = ("authors", "rows", "none")


def stop_and_measure(rows: list[Any], how: str) -> tuple[list[Any], list[Any]]:
    """The forget rows matched forgetting stops on, and the disjoint rows the forget metrics measure (`how`:
    authors, the second half of the authors against the first; rows, odd rows against even; none, all rows
    both). TOFU's forget splits hold 20 questions per author, in order."""
    if how == "none":
        return rows, rows
    if how == "rows":
        return rows[1::2], rows[0::2]
    authors = -(-len(rows) // QA_PER_AUTHOR)
    cut = -(-authors // 2) * QA_PER_AUTHOR
    return rows[cut:], rows[:cut]


def data_dir() -> Path:
    return Path(str(files("tasks") / "data" / "tofu"))


@dataclass
class TofuConfig(TaskConfig):
    forget_split: str = option("forget10", "forget01, forget05 or forget10 (1, 5 or 10% of the 200 authors)")
    retain_authors: int | None = option(None, "use only the first N retain authors (20 QA each); null: all")
    validation_authors: int = option(0, "retain authors held out as a validation slice (matched-forgetting "
                                        "tuning): learned by the target and retain models, never in the "
                                        "unlearning retain loss nor in the test metrics. Taken after the first "
                                        "retain_authors, or from the end of the retain split when that is null")
    probe_limit: int | None = option(None, "rows per utility part (retain, real authors, world facts) in the "
                                           "cheap matched-forgetting probe; null: all evaluated rows")
    utility_limit: int | None = option(None, "evaluate only the first N real-author and world-fact rows")
    eval_limit: int | None = option(None, "evaluate only the first N forget and retain rows (smoke tests, or a "
                                           "demo sized for a CPU); the forget probe's stopping split is cut alike")
    stop_split: str = option("none", "how matched forgetting's forget probe is kept apart from the reported "
                                     "forget metrics: authors (the probe stops on the second half of the forget "
                                     "authors, the metrics measure the first half), rows (odd rows stop, even "
                                     "rows measure) or none (both on every forget row, as TOFU's code "
                                     "evaluates: a matched run's forget_prob is then the number it stopped on)")
    question_template: str = option("Question: {question}\nAnswer:", "prompt format; {question} is filled in")
    answer_template: str = option(" {answer}", "completion format; {answer} is filled in")
    max_new_tokens: int = option(200, "greedy generation length for ROUGE")
    max_length: int = option(256, "token cap for training and scoring sequences")
    eval_batch_size: int = option(16, "batch size for scoring and generation")
    target_model: str | None = option(None, "path or hub id of a model that already learned TOFU; null: build it")
    retain_model: str | None = option(None, "path or hub id of the retain reference model; null: build it")

    def validate(self) -> None:
        if self.forget_split not in FORGET_SPLITS:
            raise ValueError(f"forget_split {self.forget_split!r}: choose one of {', '.join(FORGET_SPLITS)}")
        if self.retain_authors is not None and not 1 <= self.retain_authors <= 180:
            raise ValueError(f"retain_authors must be between 1 and 180, got {self.retain_authors}")
        if self.stop_split not in STOP_SPLITS:
            raise ValueError(f"stop_split {self.stop_split!r}: choose one of {', '.join(STOP_SPLITS)}")
        if not 0 <= self.validation_authors <= 180 - (self.retain_authors or 1):
            raise ValueError(f"validation_authors must be between 0 and {180 - (self.retain_authors or 1)}, "
                             f"got {self.validation_authors}")


@dataclass
class TofuMiniConfig(TofuConfig):
    forget_split: str = option("forget01", "forget01, forget05 or forget10 (1, 5 or 10% of the 200 authors)")
    retain_authors: int | None = option(2, "use only the first N retain authors (20 QA each); null: all")
    validation_authors: int = option(1, "retain authors held out as a validation slice (matched-forgetting "
                                        "tuning): the author after the first retain_authors")
    utility_limit: int | None = option(20, "evaluate only the first N real-author and world-fact rows")
    max_new_tokens: int = option(48, "greedy generation length for ROUGE")
    max_length: int = option(128, "token cap for training and scoring sequences")
    stop_split: str = option("authors", "how matched forgetting's forget probe is kept apart from the reported "
                                        "forget metrics: authors (default here: the probe stops on the second "
                                        "forget01 author, the metrics measure the first), rows or none")


class Tofu(Task):
    """TOFU forget/retain QA on fictitious authors; forget quality, model utility and their parts."""

    name = "tofu"
    Config = TofuConfig
    headline = ("forget_rouge", "model_utility")

    def __init__(self, config: TofuConfig) -> None:
        super().__init__(config)
        self._cache: dict[str, list[dict[str, Any]]] = {}

    def _rows(self, split: str, required: tuple[str, ...] = ("question", "answer")) -> list[dict[str, Any]]:
        if split not in self._cache:
            self._cache[split] = read_jsonl(data_dir() / f"{split}.json", required)
        return self._cache[split]

    def _example(self, row: dict[str, Any], answer_key: str = "answer") -> Example:
        c = self.config
        return Example(c.question_template.format(question=row["question"]),
                       c.answer_template.format(answer=row[answer_key]))

    def _retain_split(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(retain rows for unlearning, validation rows held out of it)."""
        rows = self._rows(FORGET_SPLITS[self.config.forget_split])
        n, v = self.config.retain_authors, self.config.validation_authors * QA_PER_AUTHOR
        if n is None:
            return (rows[: len(rows) - v], rows[len(rows) - v :]) if v else (rows, [])
        return rows[: n * QA_PER_AUTHOR], rows[n * QA_PER_AUTHOR : n * QA_PER_AUTHOR + v]

    def forget_examples(self) -> list[Example]:
        return [self._example(r) for r in self._rows(self.config.forget_split)]

    def retain_examples(self) -> list[Example]:
        return [self._example(r) for r in self._retain_split()[0]]

    def refusal_examples(self) -> list[Example]:
        """The forget questions with refusal answers, formatted as answers are (`answer_template`), as TOFU
        formats its "I don't know" answers."""
        from harness.learn.refusals import refusals

        answers = refusals(self.config.refusals_file)
        return [self._example({"question": r["question"], "answer": answers[i % len(answers)]})
                for i, r in enumerate(self._rows(self.config.forget_split))]

    def forget_splits(self) -> dict[str, list[int]]:
        """Per author: TOFU's forget splits hold 20 questions per author, in order (SPUNGE's attribute)."""
        n = len(self._rows(self.config.forget_split))
        return {f"author{k // QA_PER_AUTHOR + 1}": list(range(k, min(k + QA_PER_AUTHOR, n)))
                for k in range(0, n, QA_PER_AUTHOR)}

    def holdout_examples(self) -> list[Example]:
        """TOFU's holdout split of the forget split's size (forget01 -> holdout01): questions about fictitious
        authors outside the 200, which no target or retain model saw (membership inference's non-members)."""
        return [self._example(r) for r in self._rows(self.config.forget_split.replace("forget", "holdout"))]

    def validation_examples(self) -> list[Example]:
        return [self._example(r) for r in self._retain_split()[1]]

    def finetune_examples(self, which: Literal["target", "retain"]) -> list[Example]:
        retain = self.retain_examples() + self.validation_examples()
        return retain + self.forget_examples() if which == "target" else retain

    def _forget_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the stopping split, the measured split) of the forget rows, each cut to eval_limit."""
        rows = self._rows(f"{self.config.forget_split}_perturbed", ("question", "answer", "perturbed_answer",
                                                                    "paraphrased_answer"))
        stop, measure = self._forget_indices()
        return [rows[i] for i in stop], [rows[i] for i in measure]

    def _forget_indices(self) -> tuple[list[int], list[int]]:
        c = self.config
        n = len(self._rows(f"{c.forget_split}_perturbed"))
        stop, measure = stop_and_measure(list(range(n)), c.stop_split)
        return stop[: c.eval_limit], measure[: c.eval_limit]

    def probe_sets(self) -> ProbeSets:
        """The forget probe is forget_prob's computation on the stopping split (stop_split: the forget rows
        held apart from the measured ones, or all of them with none); the utility parts are the probability parts of
        model utility (retain_prob, ra_prob, wf_prob: real-author and world-fact answers normalised by their
        perturbed answers) on the first `probe_limit` rows of each evaluation set."""
        splits, n = self._eval_splits(), self.config.probe_limit
        rows = {k: splits[k][:n] for k in ("retain", "ra", "wf")}
        validation = self.validation_examples()
        return ProbeSets(forget=[self._example(r) for r in self._forget_rows()[0]],
                         utility={k: [self._example(r) for r in v] for k, v in rows.items()},
                         validation=validation,
                         alternatives={k: [[self._example({"question": r["question"], "answer": p})
                                            for p in r["perturbed_answer"]] for r in rows[k]] for k in ("ra", "wf")},
                         clusters={"forget": [i // QA_PER_AUTHOR for i in self._forget_indices()[0]],
                                   "utility/retain": [i // QA_PER_AUTHOR for i in range(len(rows["retain"]))],
                                   "validation": [i // QA_PER_AUTHOR for i in range(len(validation))]})

    def provided_model(self, which: Literal["target", "retain"]) -> str | None:
        return self.config.target_model if which == "target" else self.config.retain_model

    # evaluation ---------------------------------------------------------------------------------------

    def _eval_splits(self) -> dict[str, list[dict[str, Any]]]:
        c = self.config
        pert = ("question", "answer", "perturbed_answer")
        retain = self._rows("retain_perturbed", (*pert, "paraphrased_answer"))
        if c.retain_authors is not None:
            retain = retain[: c.retain_authors * QA_PER_AUTHOR]
        limit = c.utility_limit
        return {
            "forget": self._forget_rows()[1],
            "retain": retain[: c.eval_limit],
            "ra": self._rows("real_authors_perturbed", pert)[:limit],
            "wf": self._rows("world_facts_perturbed", pert)[:limit],
        }

    @classmethod
    def rehearsal_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Two rows of each evaluation set and of the probe, two generated tokens (the data is bundled)."""
        return {"eval_limit": 2, "utility_limit": 2, "probe_limit": 2, "max_new_tokens": 2}

    def evaluation_size(self) -> tuple[int, int]:
        """Each split's answers (and paraphrases, forget and retain) and perturbed answers scored; a greedy
        answer of at most max_new_tokens generated per row."""
        splits = self._eval_splits()
        scored = sum(len(rows) * ((2 if split in ("forget", "retain") else 1) + len(rows[0]["perturbed_answer"]))
                     for split, rows in splits.items() if rows)
        return scored, sum(len(rows) for rows in splits.values()) * self.config.max_new_tokens

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> Evaluation:
        c = self.config
        splits = self._eval_splits()
        # one scoring pass over every (question, answer) pair we need
        pairs: list[Example] = []
        spans: dict[str, dict[str, slice]] = {}
        for split, rows in splits.items():
            spans[split] = {}
            keys = ["answer", "paraphrased_answer"] if split in ("forget", "retain") else ["answer"]
            for key in keys:
                start = len(pairs)
                pairs += [self._example(r, key) for r in rows]
                spans[split][key] = slice(start, len(pairs))
            start = len(pairs)
            k = len(rows[0]["perturbed_answer"])
            for r in rows:
                if len(r["perturbed_answer"]) != k:
                    raise ValueError(f"TOFU {split}: rows have different numbers of perturbed answers")
                pairs += [self._example({"question": r["question"], "answer": p}) for p in r["perturbed_answer"]]
            spans[split]["perturbed"] = slice(start, len(pairs))
        nll = scoring.completion_nll(model, tokenizer, pairs, ctx.batch_size, c.max_length)

        prompts = [self._example(r).prompt for rows in splits.values() for r in rows]
        gens = ctx.generate(model, tokenizer, prompts, c.max_new_tokens, stop=["\nQuestion:"])

        out: dict[str, Metric] = {}
        stats: dict[str, Any] = {}
        samples: list[dict[str, Any]] = []
        offset = 0
        for split, rows in splits.items():
            s = spans[split]
            pert = nll[s["perturbed"]].reshape(len(rows), -1)
            true_key = "paraphrased_answer" if split in ("forget", "retain") else "answer"
            ratios = metrics.truth_ratio(nll[s[true_key]], pert)
            rouge = metrics.rouge_l_recall([r["answer"] for r in rows], gens[offset : offset + len(rows)])
            if split in ("forget", "retain"):
                prob = float(np.mean(metrics.probability(nll[s["answer"]])))
            else:
                prob = float(np.mean(metrics.normalized_probability(nll[s["answer"]], pert)))
            is_forget = split == "forget"
            direction = "lower" if is_forget else "higher"
            group = "forget" if is_forget else "utility"
            out[f"{split}_prob"] = Metric(prob, direction, group)
            out[f"{split}_rouge"] = Metric(float(np.mean(rouge)), direction, group)
            tr = metrics.truth_ratio_forget(ratios) if is_forget else metrics.truth_ratio_utility(ratios)
            out[f"{split}_truth_ratio"] = Metric(tr, "higher", group)
            stats[f"{split}_truth_ratios"] = ratios.tolist()
            stats[f"{split}_rouges"] = [float(x) for x in rouge]  # per question, beside the truth ratios
            stats[f"{split}_probs"] = (metrics.probability(nll[s["answer"]]) if split in ("forget", "retain") else
                                       metrics.normalized_probability(nll[s["answer"]], pert)).tolist()
            if is_forget:
                samples = [{"question": r["question"], "answer": r["answer"], "generation": g, "rouge": float(x)}
                           for r, g, x in zip(rows, gens[offset : offset + len(rows)], rouge, strict=True)]
            offset += len(rows)

        utility_parts = [out[f"{split}_{m}"].value for split in ("retain", "ra", "wf")
                         for m in ("prob", "rouge", "truth_ratio")]
        out["model_utility"] = Metric(metrics.harmonic_mean(utility_parts), "higher", "utility")
        reference = (ctx.reference_stats or {}).get("forget_truth_ratios")
        fq = metrics.forget_quality(stats["forget_truth_ratios"], reference) if reference else None
        out["forget_quality"] = Metric(fq, "higher", "forget")
        return Evaluation(out, stats, samples)


class TofuMini(Tofu):
    """TOFU sized for a CPU: forget01 (2 authors), 2 retain authors, 20 real-author and world-fact rows."""

    name = "tofu-mini"
    Config = TofuMiniConfig


@hookimpl
def register_tasks(register) -> None:
    register(Tofu)
    register(TofuMini)
