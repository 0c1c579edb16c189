"""Scoring an in-memory model with lm-eval (EleutherAI): bundled local tasks and any task lm-eval knows.

The model is wrapped in lm-eval's `HFLM` with the tokenizer passed in (lm-eval would otherwise fetch one by
name), with the hub switched off. Local tasks are lm-eval YAML configs whose data we write as JSON Lines
into a cache folder; bundled ones (`mmlu_bundled`) come from data shipped in this package. Any other name
goes to lm-eval's own task index, and needs that task's data in the local datasets cache.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from harness.api import Metric
from harness.cache import cache_root, cached_dir, stable_hash
from harness.errors import UnlearnBenchError

log = logging.getLogger(__name__)

CHOICE_PROMPT = ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
                 "D. {{choices[3]}}\nAnswer:")


def description(subject: str) -> str:
    """lm-eval's description line of an MMLU or WMDP subject."""
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def choice_prompt(row: dict[str, Any]) -> str:
    """`CHOICE_PROMPT` rendered for one row, in Python (the probe of matched forgetting scores it directly)."""
    c = row["choices"]
    return f"{row['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


@dataclass
class LocalTask:
    """One lm-eval multiple-choice task over rows {question, choices[4], answer (index)}, as lm-eval's MMLU
    and WMDP tasks define it (zero-shot, continuations " A".." D", accuracy)."""

    name: str
    rows: list[dict[str, Any]]
    description: str = ""

    def config(self, data_file: Path) -> dict[str, Any]:
        return {
            "task": self.name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test",
            "output_type": "multiple_choice", "description": self.description, "doc_to_text": CHOICE_PROMPT,
            "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }


@dataclass
class LocalGroup:
    """Local tasks reported together: accuracy over all their questions (weighted by size, as lm-eval's
    `mmlu` and `wmdp` groups are)."""

    name: str
    tasks: list[LocalTask] = field(default_factory=list)

    def config(self) -> dict[str, Any]:
        return {"group": self.name, "task": [t.name for t in self.tasks],
                "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
                "metadata": {"version": 1.0}}


def choice_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an MMLU-style CSV (question, choice0..choice3, answer index), checked, as plain strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"question", "choice0", "choice1", "choice2", "choice3", "answer"}
        if not need <= set(reader.fieldnames or ()):
            raise UnlearnBenchError(f"{path}: header must have {sorted(need)}, got {reader.fieldnames}")
        rows = []
        for line, r in enumerate(reader, start=2):
            if r["answer"] not in ("0", "1", "2", "3"):
                raise UnlearnBenchError(f"{path}, line {line}: field 'answer' must be 0-3, got {r['answer']!r}")
            rows.append({"question": r["question"], "choices": [r[f"choice{i}"] for i in range(4)],
                         "answer": int(r["answer"])})
    return rows


def mmlu_description(subject: str) -> str:
    """lm-eval's description line of an MMLU subject named as its file is (`college_biology`)."""
    return description(subject.replace("_", " "))


def mmlu_rows(split: str = "test") -> dict[str, list[dict[str, Any]]]:
    """The bundled MMLU split (tasks/data/mmlu, MIT; `test` or `dev`), rows by subject in name order."""
    folder = Path(str(files("tasks") / "data" / "mmlu" / split))
    return {path.name.removesuffix(f"_{split}.csv"): choice_rows(path)
            for path in sorted(folder.glob(f"*_{split}.csv"))}


def mmlu_bundled() -> LocalGroup:
    """The bundled MMLU test split: lm-eval's zero-shot MMLU prompt per subject."""
    group = LocalGroup("mmlu_bundled")
    for subject, rows in mmlu_rows("test").items():
        group.tasks.append(LocalTask(f"mmlu_bundled_{subject}", rows, mmlu_description(subject)))
    return group


BUNDLED: dict[str, Callable[[], LocalGroup]] = {"mmlu_bundled": mmlu_bundled}


def write_task_dir(groups: Sequence[LocalGroup]) -> Path:
    """A folder of lm-eval YAML configs and their JSON Lines data (cached by content)."""
    key = stable_hash([[g.name, [[t.name, t.description, t.rows] for t in g.tasks]] for g in groups], 16)

    final = cache_root() / "lm_eval_tasks" / key  # the YAMLs name their data by its published path

    def build(out: Path) -> None:
        for group in groups:
            for task in group.tasks:
                (out / f"{task.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in task.rows))
                config = task.config(final / f"{task.name}.jsonl")
                (out / f"{task.name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            if len(group.tasks) > 1 or group.tasks[0].name != group.name:
                (out / f"{group.name}.yaml").write_text(yaml.safe_dump(group.config(), sort_keys=False))

    folder, _ = cached_dir("lm_eval_tasks", key, build)
    if folder != final:
        raise RuntimeError(f"lm-eval task folder published at {folder}, expected {final}")
    return folder


def _summary(results: dict[str, Any], name: str) -> dict[str, Any]:
    block = (results.get("groups") or {}).get(name) or results["results"].get(name)
    if block is None:
        raise UnlearnBenchError(f"lm-eval returned no result for {name!r}")
    out = {k.split(",")[0]: v for k, v in block.items() if "," in k and isinstance(v, int | float)}
    subtasks = results.get("group_subtasks", {}).get(name) or [name]
    out["n"] = sum(int(results["n-samples"][t]["effective"]) for t in subtasks if t in results.get("n-samples", {}))
    return out


def evaluate(model, tokenizer, tasks: Sequence[str], limit: int | None = None, batch_size: int = 16,
             local: Sequence[LocalGroup] = ()) -> dict[str, Any]:
    """lm-eval's zero-shot numbers for `tasks` on the in-memory `model`: {task: {acc, acc_stderr, n}}, plus
    lm-eval's version. `limit` caps the questions per (sub)task. `local` adds task groups built in code."""
    started = time.perf_counter()
    log.info("lm-eval: %s%s", ", ".join([*tasks, *(g.name for g in local)]),
             f" (at most {limit} questions per task)" if limit else "")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    groups = {g.name: g for g in local}
    for name in tasks:
        if name in BUNDLED and name not in groups:
            groups[name] = BUNDLED[name]()
    outside = [t for t in tasks if t not in groups]
    include = str(write_task_dir(list(groups.values()))) if groups else None
    manager = TaskManager(include_path=include, include_defaults=bool(outside))
    if outside:
        unknown = [t for t in outside if t not in manager.all_tasks]
        if unknown:
            raise UnlearnBenchError(f"unknown lm-eval task(s) {unknown}; bundled: {sorted(BUNDLED)}")
    was_training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                      log_samples=False, random_seed=0, numpy_random_seed=0,
                                      torch_random_seed=0, fewshot_random_seed=0)
    except ConnectionError as exc:
        raise UnlearnBenchError(f"lm-eval could not load a task's data offline ({exc}); use a bundled or "
                                "local task, or put the data in the datasets cache first") from exc
    finally:
        model.train(was_training)
    log.info("lm-eval: done in %.1f s", time.perf_counter() - started)
    return {"lm_eval_version": lm_eval.__version__, "limit": limit, "batch_size": batch_size,
            "tasks": {t: _summary(res, t) for t in tasks}}


def metrics(result: dict[str, Any], direction: str = "higher", group: str = "utility",
            rename: dict[str, str] | None = None) -> dict[str, Metric]:
    """`{task}_acc` metrics from an `evaluate` result (`rename` maps task names to metric prefixes)."""
    rename = rename or {}
    return {f"{rename.get(t, t)}_acc": Metric(v.get("acc"), direction, group) for t, v in result["tasks"].items()}
