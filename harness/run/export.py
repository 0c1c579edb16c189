"""Unlearned models as plain Hugging Face folders (safetensors weights, tokenizer, a model card), usable by
`AutoModelForCausalLM`, `unlearn-bench eval` and lm-eval's own command line.

A run writes one at the end when its spec says `save_model` (or `run --save-model DIR`). With
`keep_weights`, it instead keeps only the weights unlearning could change (`RESULTS/weights/<run-id>.
safetensors`: for a sparse mask or RMU's modules a small part of the model) and `unlearn-bench export RUN_ID
DIR` rebuilds the folder later from them and the run's target model. Both are safetensors: nothing in a
results folder executes code when loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.errors import UnlearnBenchError
from harness.io import markdown_text, shared_mode, temp_path
from harness.run import models, records

MARKER = "unlearn_bench_record.json"  # in every folder an export writes: a later export may replace it
# Record fields a published model folder leaves out: the forget set's questions, answers and the model's
# generations (kept in the results folder). Publishing an unlearned model must not publish what it forgot.
PRIVATE = {"samples": "the evaluation's questions, answers and generations (forget-set text included) stay in "
                      "the results folder"}


def check_destination(out: Path) -> None:
    """An export writes `out` only when it is absent, an empty folder, or an earlier export (it holds MARKER);
    anything else is an error and nothing is touched: the harness never deletes what it did not write."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise UnlearnBenchError(f"{out} exists and is not a folder: choose a new or empty folder for the model")
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise UnlearnBenchError(f"{out} is the current folder or holds it: choose a new or empty folder")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise UnlearnBenchError(f"{out} is not empty and is not an earlier export (it has no {MARKER}): nothing "
                                "was written; choose a new or empty folder for the model")


def public_record(record: records.Record) -> dict:
    """The record as an exported folder carries it: without PRIVATE's fields, saying what it left out."""
    data = {k: v for k, v in record.to_json().items() if k not in PRIVATE}
    return data | {"omitted": {k: why for k, why in PRIVATE.items() if k in record.to_json()}}


def weights_path(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / "weights" / f"{run_id}.safetensors"


def keep_weights(model: torch.nn.Module, names: set[str], path: Path) -> None:
    """The named parameters of the (merged) unlearned model, atomically, as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if n in names}
    tmp = temp_path(path)
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def model_card(record: records.Record) -> str:
    """README.md of a saved model: what it is, how it was made, what it scored."""
    spec = record.spec
    lines = ["---", "library_name: transformers", "tags: [unlearning, unlearn-bench]", "---", "",
             f"# {markdown_text(record.id)}", "",
             f"Unlearned with unlearn-bench from {markdown_text((record.models or {}).get('target'))} "
             f"on task {markdown_text(spec.get('task'))}: attribution {markdown_text(spec.get('attribution'))} at "
             f"ratio {spec.get('ratio')}, objective {markdown_text(spec.get('objective'))}, seed {spec.get('seed')}, "
             f"learning rate {spec.get('train', {}).get('lr')}.", "", "| metric | value | better |",
             "| --- | --- | --- |"]
    for name, m in sorted(record.metrics.items()):
        value = m.get("value")
        lines.append(f"| {markdown_text(name)} | {'' if value is None else f'{value:.6g}'} | "
                     f"{markdown_text(m.get('direction'))} |")
    lines += ["", f"The run's record (spec, curves, provenance) is `{MARKER}`; the evaluation's questions, answers "
              "and generations, which include the forget set, are left out of it.", ""]
    return "\n".join(lines)


def save_folder(model: torch.nn.Module, tokenizer, record: records.Record, out: Path) -> Path:
    """Write `model` as a Hugging Face folder at `out` (check_destination: absent, empty or an earlier export,
    which is replaced atomically), with the run's model card and its public record."""
    out = Path(out)
    check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, shared_mode(0o777))
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(record))
        (tmp / MARKER).write_text(json.dumps(public_record(record), indent=1, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export(results_dir: Path, run_id: str, out: Path) -> Path:
    """The model folder of a finished run from its kept weights (spec `keep_weights`) and its target."""
    check_destination(out)
    record = records.find(results_dir, run_id)
    if record is None:
        raise UnlearnBenchError(f"no readable record {Path(results_dir) / 'runs' / (run_id + '.json')}")
    if not record.finished or record.kind != "run":
        raise UnlearnBenchError(f"run {run_id} is {record.kind} with status {record.status}: only finished runs "
                                "export")
    kept = weights_path(results_dir, run_id)
    if not kept.is_file():
        raise UnlearnBenchError(f"run {run_id} kept no weights ({kept} is missing): run it with keep_weights: true "
                                "(or save_model: true, which writes the folder at once)")
    model, tok = models.load(record.models["target"], record.spec.get("dtype", "float32"), "cpu")
    state = load_file(str(kept))
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise UnlearnBenchError(f"{kept}: weights {unknown[:3]} are not parameters of the target model "
                                f"{record.models['target']}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    return save_folder(model, tok, record, out)
