"""WMDP (Li et al. 2024): remove hazardous knowledge, keep general knowledge. Forget and retain corpora come
from hub names (`cais/wmdp-corpora:cyber-forget-corpus`) or files; accuracy on wmdp_bio / wmdp_cyber /
wmdp_chem and MMLU is lm-eval's zero-shot multiple-choice accuracy on the model in memory.

There is no fine-tuned target: the base model (Zephyr-7B in the paper) is unlearned directly, and RMU is the
default objective. `wmdp-mini` runs on the synthetic fixtures in tasks/data/wmdp (real data: README.md), with
a target and a retain model fine-tuned on them. Matched forgetting probes multiple-choice questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from harness.api import EvalContext, Evaluation, Example, ProbeSets, Task, TaskConfig
from harness.config import option
from harness.errors import DataError
from harness.hookspecs import hookimpl
from harness.io import read_jsonl
from harness.measure import lm_eval_bridge
from tasks import text

SUBJECTS = {"bio": "biology", "cyber": "computer security", "chem": "chemistry"}
BUNDLED_PREFIX = "bundled:"
STOP_SPLITS = ("questions", "none")
PROBE_LENGTH = 2048  # questions are scored whole (MMLU's longest prompts pass 1,000 tokens), as lm-eval does


def resolve(source: str) -> Path | None:
    """A corpus/questions location as a local path (`bundled:` means tasks/data/), or None for a hub name."""
    if source.startswith(BUNDLED_PREFIX):
        return Path(str(files("tasks") / "data")) / source.removeprefix(BUNDLED_PREFIX)
    path = Path(source).expanduser()
    if path.exists() or ":" not in source:
        return path
    return None


def load_corpus(source: str, limit: int | None) -> list[str]:
    """Texts of a corpus: a file (.jsonl with `text`, .json, .txt) or a hub dataset `owner/name:config`, or
    `name:config:split` for a split other than train (WMDP's RMU retains on `wikitext:wikitext-2-raw-v1:test`);
    an empty config means the dataset's only one (`cais/wmdp-bio-forget-corpus::train`)."""
    path = resolve(source)
    if path is not None:
        return text.read_texts(path, limit)
    import datasets

    name, config, *rest = source.split(":")
    try:
        data = datasets.load_dataset(name, config or None, split=rest[0] if rest else "train")
    except Exception as exc:  # offline, gated or misspelled: say which corpus and what to do
        raise DataError(f"corpus {source!r} could not be loaded ({type(exc).__name__}: {exc}). Download it into "
                        "the datasets cache first, or give a local .jsonl path with a 'text' field") from None
    texts = data["text"]
    return list(texts if limit is None else texts[:limit])


@dataclass
class WmdpConfig(TaskConfig):
    forget_corpora: list[str] = option(["cais/wmdp-corpora:cyber-forget-corpus"],
                                       "forget corpora: hub `name:config`, or paths (the bio forget corpus, "
                                       "bio_remove_dataset.jsonl, comes from CAIS on request)")
    retain_corpora: list[str] = option(["cais/wmdp-corpora:cyber-retain-corpus",
                                        "cais/wmdp-corpora:bio-retain-corpus"], "retain corpora, as above")
    corpus_limit: int | None = option(None, "use only the first N documents of each corpus")
    chunk_words: int | None = option(384, "each document is cut into chunks of this many words (~512 tokens); "
                                          "null: whole documents as they are, cut at the token cap (RMU's code)")
    chunks_per_text: int | None = option(1, "chunks kept per document (RMU's code keeps the first 512 tokens)")
    min_chars: int = option(0, "documents of at most this many characters are left out (RMU's code: --min_len, "
                               "0: empty lines)")
    forget_max_lengths: list[int] | None = option(None, "token cap of each forget corpus's examples, in order "
                                                        "(RMU's code: 512 for bio, 768 for cyber); null: max_length")
    questions_dir: str | None = option(None, "folder with bio.jsonl, cyber.jsonl, chem.jsonl in cais/wmdp's "
                                              "format; null: lm-eval's own wmdp tasks (data in the datasets cache)")
    subjects: list[str] = option(["bio", "cyber", "chem"], "WMDP subjects scored")
    question_limit: int | None = option(None, "lm-eval limit: at most N questions per subject")
    utility_tasks: list[str] = option(["mmlu_bundled"], "lm-eval tasks for utility (MMLU from the bundled copy)")
    utility_limit: int | None = option(None, "lm-eval limit for the utility tasks, per (sub)task")
    max_length: int = option(512, "token cap for unlearning sequences")
    eval_batch_size: int = option(16, "lm-eval batch size")
    probe_limit: int = option(32, "matched forgetting's probe: at most N questions per subject (forget) and N "
                                  "MMLU test (utility) and dev (validation) questions, spread over subjects")
    probe_level: float = option(0.3, "matched forgetting's level: the mean normalised probability of the right "
                                     "letter at which forgetting counts as reached (chance is 0.25)")
    stop_split: str = option("none", "how matched forgetting's forget probe is kept apart from the reported WMDP "
                                     "accuracy: questions (the probe stops on every second question of each "
                                     "subject, the 2nd, 4th, ...; the accuracy measures the others) or none (both on "
                                     "every question, as the papers' fixed-budget runs score WMDP: a matched run's "
                                     "accuracy then rests on the questions it stopped on)")

    def validate(self) -> None:
        if not 0.25 <= self.probe_level < 1:
            raise ValueError(f"probe_level must be in [0.25, 1) (0.25 is chance), got {self.probe_level}")
        if self.stop_split not in STOP_SPLITS:
            raise ValueError(f"stop_split {self.stop_split!r}: choose one of {', '.join(STOP_SPLITS)}")
        unknown = sorted(set(self.subjects) - set(SUBJECTS))
        if unknown or not self.subjects:
            raise ValueError(f"subjects {unknown or '[]'}: choose from {', '.join(SUBJECTS)}")
        if not self.forget_corpora or not self.retain_corpora:
            raise ValueError("forget_corpora and retain_corpora need at least one corpus each")
        if self.forget_max_lengths is not None and len(self.forget_max_lengths) != len(self.forget_corpora):
            raise ValueError(f"forget_max_lengths has {len(self.forget_max_lengths)} caps for "
                             f"{len(self.forget_corpora)} forget corpora")
        if self.corpus_limit is not None and self.corpus_limit < 1:
            raise ValueError(f"corpus_limit must be >= 1 or null (every document), got {self.corpus_limit}")
        if self.chunk_words is not None and self.chunk_words < 1:
            raise ValueError(f"chunk_words must be >= 1 or null, got {self.chunk_words}")


@dataclass
class WmdpMiniConfig(WmdpConfig):
    forget_corpora: list[str] = option(["bundled:wmdp/forget.jsonl"], "forget corpora (the synthetic fixture)")
    retain_corpora: list[str] = option(["bundled:wmdp/retain.jsonl"], "retain corpora (the synthetic fixture)")
    chunk_words: int = option(64, "each document is cut into chunks of this many words")
    questions_dir: str | None = option("bundled:wmdp", "folder with bio/cyber/chem.jsonl (the fixtures)")
    subjects: list[str] = option(["bio", "cyber"], "WMDP subjects scored (the fixture's forget corpus states "
                                                   "the bio and cyber answers; chem stands for knowledge it lacks)")
    utility_limit: int | None = option(2, "lm-eval limit for the utility tasks, per (sub)task")
    max_length: int = option(128, "token cap for unlearning sequences")
    stop_split: str = option("questions", "how matched forgetting's forget probe is kept apart from the reported "
                                          "WMDP accuracy: questions (default here: the 2nd, 4th, ... questions "
                                          "of each subject stop, the 1st, 3rd, ... are measured) or none")


class Wmdp(Task):
    """WMDP: unlearn hazardous-knowledge corpora from the base model; WMDP and MMLU accuracy via lm-eval."""

    name = "wmdp"
    Config = WmdpConfig
    headline = ("wmdp_bio_acc", "mmlu_bundled_acc")
    default_objective = "rmu"
    uses_base_model = True

    @classmethod
    def rehearsal_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The bundled fixtures in place of each hub corpus (one per forget topic, so RMU keeps its topics) and
        of lm-eval's WMDP questions; four documents, two questions per subject and subtask."""
        topics = len(config.get("forget_corpora") or [None])
        return {"forget_corpora": ["bundled:wmdp/forget.jsonl"] * topics,
                "retain_corpora": ["bundled:wmdp/retain.jsonl"] * len(config.get("retain_corpora") or [None]),
                "questions_dir": "bundled:wmdp", "corpus_limit": 4, "question_limit": 2, "utility_limit": 2,
                "probe_limit": 2, "max_length": 64,
                "forget_max_lengths": None if config.get("forget_max_lengths") is None else [64] * topics}

    def _texts(self, source: str) -> list[str]:
        c = self.config
        texts = [t for t in load_corpus(source, c.corpus_limit) if len(t) > c.min_chars]
        return texts if c.chunk_words is None else text.chunks(texts, c.chunk_words, c.chunks_per_text)

    def forget_examples(self) -> list[Example]:
        """Each forget corpus is a topic (its index), with its own token cap where `forget_max_lengths` says."""
        caps = self.config.forget_max_lengths or [None] * len(self.config.forget_corpora)
        return [Example("", t, topic=i, max_length=cap)
                for i, (source, cap) in enumerate(zip(self.config.forget_corpora, caps, strict=True))
                for t in self._texts(source)]

    def forget_splits(self) -> dict[str, list[int]]:
        """Per forget corpus (topic: bio, cyber), the attribute SPUNGE splits WMDP's forget set by."""
        parts: dict[str, list[int]] = {}
        for i, ex in enumerate(self.forget_examples()):
            parts.setdefault(f"topic{ex.topic + 1}", []).append(i)
        return parts

    def retain_examples(self) -> list[Example]:
        """With as many retain corpora as forget corpora, retain corpus i serves topic i (RMU's pairing);
        otherwise all retain text serves every topic."""
        paired = len(self.config.retain_corpora) == len(self.config.forget_corpora)
        return [Example("", t, topic=i if paired else 0)
                for i, source in enumerate(self.config.retain_corpora) for t in self._texts(source)]

    def finetune_examples(self, which: Literal["target", "retain"]) -> list[Example]:
        return []

    def questions(self, subject: str) -> list[dict]:
        """The WMDP questions of a subject ({question, choices[4], answer}): from `questions_dir`, or from
        `cais/wmdp` in the datasets cache."""
        c = self.config
        if c.questions_dir is None:
            import datasets

            try:
                return list(datasets.load_dataset("cais/wmdp", f"wmdp-{subject}", split="test"))
            except Exception as exc:  # offline or not cached: say which data and what to do
                raise DataError(f"WMDP questions cais/wmdp:wmdp-{subject} could not be loaded "
                                f"({type(exc).__name__}: {exc}). Download them into the datasets cache first, or "
                                "set questions_dir") from None
        folder = resolve(c.questions_dir)
        if folder is None or not folder.is_dir():
            raise DataError(f"questions_dir {c.questions_dir!r} is not a folder")
        path = folder / f"{subject}.jsonl"
        rows = read_jsonl(path, ("question", "choices", "answer"))
        for line, r in enumerate(rows, start=1):
            if len(r["choices"]) != 4 or r["answer"] not in (0, 1, 2, 3):
                raise DataError(f"{path}, row {line}: needs 4 choices and an answer index 0-3")
        return rows

    def stopping_and_measured(self, subject: str) -> tuple[list[dict], list[dict]]:
        """A subject's questions matched forgetting may stop on, and the disjoint ones its accuracy measures
        (`stop_split: questions`: the 2nd, 4th, ... against the 1st, 3rd, ...; none: every question both)."""
        rows = self.questions(subject)
        if self.config.stop_split == "none":
            return rows, rows
        if len(rows) < 2:
            raise DataError(f"WMDP {subject}: {len(rows)} question(s), and stop_split: questions needs at least 2 "
                            "(one to stop on, one to measure); use stop_split: none")
        return rows[1::2], rows[0::2]

    def _question_tasks(self) -> tuple[list[str], list[lm_eval_bridge.LocalGroup], dict[str, str]]:
        """lm-eval task names for the subjects, local task groups to build, and task -> metric prefix (local
        tasks where the questions come from a folder, or where the stopping split leaves some out)."""
        c = self.config
        if c.questions_dir is None and c.stop_split == "none":
            names = [f"wmdp_{s}" for s in c.subjects]
            return names, [], {n: n for n in names}
        groups, rename = [], {}
        for s in c.subjects:
            task = lm_eval_bridge.LocalTask(f"wmdp_{s}_local", self.stopping_and_measured(s)[1], describe(s))
            groups.append(lm_eval_bridge.LocalGroup(task.name, [task]))
            rename[task.name] = f"wmdp_{s}"
        return list(rename), groups, rename

    def probe_sets(self) -> ProbeSets:
        """Matched forgetting on multiple choice, read as lm-eval reads it: each question in lm-eval's zero-shot
        prompt, the right letter against the three others (mean normalised probability; its argmax is
        lm-eval's accuracy). Forget: the first `probe_limit` questions of each subject's stopping split
        (`stop_split`); utility: MMLU test questions; validation (for tuning): MMLU dev questions, which no test
        metric uses; level: `probe_level`, used where there is no retain model to read it from (WMDP; wmdp-mini
        has one)."""
        n = self.config.probe_limit
        forget = [(describe(s), r) for s in self.config.subjects for r in self.stopping_and_measured(s)[0][:n]]
        utility, validation = (spread(lm_eval_bridge.mmlu_rows(split), n) for split in ("test", "dev"))
        sets = {"forget": forget, "mmlu": utility, "validation": validation}
        letters = {k: [choice_examples(*q) for q in v] for k, v in sets.items()}
        return ProbeSets(forget=[e[0] for e in letters["forget"]],
                         utility={"mmlu": [e[0] for e in letters["mmlu"]]},
                         validation=[e[0] for e in letters["validation"]],
                         alternatives={k: [e[1:] for e in v] for k, v in letters.items()},
                         level=self.config.probe_level, max_length=PROBE_LENGTH)

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> Evaluation:
        c = self.config
        names, local, rename = self._question_tasks()
        hazard = lm_eval_bridge.evaluate(model, tokenizer, names, c.question_limit, ctx.batch_size, local)
        out = lm_eval_bridge.metrics(hazard, "lower", "forget", rename)
        stats = {"wmdp": hazard}
        if c.utility_tasks:
            utility = lm_eval_bridge.evaluate(model, tokenizer, c.utility_tasks, c.utility_limit, ctx.batch_size)
            out.update(lm_eval_bridge.metrics(utility))
            stats["utility"] = utility
        return Evaluation(out, stats)


class WmdpMini(Wmdp):
    """WMDP on the bundled synthetic fixtures (format checks and CPU runs; not WMDP numbers). No base model
    knows the fixtures' invented facts, so, as TOFU does, the target is the base model fine-tuned on both
    corpora (it reads the answers in the forget corpus) and the retain model on the retain corpus alone."""

    name = "wmdp-mini"
    Config = WmdpMiniConfig
    uses_base_model = False

    def finetune_examples(self, which: Literal["target", "retain"]) -> list[Example]:
        return (self.forget_examples() if which == "target" else []) + self.retain_examples()


def describe(subject: str) -> str:
    """lm-eval's description line of a WMDP subject (bio, cyber, chem)."""
    return lm_eval_bridge.description(SUBJECTS[subject])


def choice_examples(description: str, row: dict) -> list[Example]:
    """The question in lm-eval's zero-shot prompt with each letter as a completion (no end-of-sequence token,
    as lm-eval scores it), the right one first."""
    prompt = description + lm_eval_bridge.choice_prompt(row)
    order = [row["answer"]] + [i for i in range(4) if i != row["answer"]]
    return [Example(prompt, " " + "ABCD"[i], eos=False) for i in order]


def spread(by_subject: dict[str, list[dict]], n: int) -> list[tuple[str, dict]]:
    """At most n (description, row) pairs taken round-robin over subjects (row 0 of each, then row 1, ...)."""
    out: list[tuple[str, dict]] = []
    for i in range(max(map(len, by_subject.values()), default=0)):
        for subject, rows in by_subject.items():
            if i < len(rows) and len(out) < n:
                out.append((lm_eval_bridge.mmlu_description(subject), rows[i]))
    return out


@hookimpl
def register_tasks(register) -> None:
    register(Wmdp)
    register(WmdpMini)
