"""`sweep FILE --rehearse`: a sweep file's whole grid on a stand-in model, every size cut, before the GPU hours.

Everything the file says stays (task, splits, templates, attributions, objectives, update rules, probes,
matched forgetting, tuning, SPUNGE and offset blocks, comparisons) except what makes it big or needs what this
machine lacks:

- the model: the stand-in (default `tiny-llama`, a Llama built from a config here), float32 on the CPU, its
  target and retain models fine-tuned here (a provided `target_model`/`retain_model` is dropped); offset
  unlearning's small model: the stand-in too;
- sizes: the first seed and the first tuning seed; 2 unlearning steps of batches of at most 2; 2 fine-tuning
  steps; each task's own cuts (`Task.rehearsal_config`: evaluation rows, generated tokens, probe rows, and
  bundled data in place of hub corpora); one relearning step; lm-eval utility on 2 questions per subtask;
- placement: one local process, no cluster, the vLLM backend replaced by HF where vLLM is not installed;
- matched forgetting: level 0, never reached (a stand-in target fine-tuned for 2 steps may know no more than
  its retain model, and a run would then refuse: nothing to unlearn), so the runs stop at their budget.

Its records say `rehearsal: true` (a field of the run spec, so of its run id): the leaderboard refuses a folder
that mixes them with real runs. A rehearsal that passes means the file's code paths run; it is not a result.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from harness.config import from_dict, to_dict

STAND_IN = "tiny-llama"
STEPS = 2


def _cut(data: dict[str, Any], stand_in: str, registry, layers: int, notes: list[str]) -> dict[str, Any]:
    """One grid's fields (plain data) cut to a rehearsal on a stand-in of `layers` decoder layers."""
    task_cls = registry.get("task", data["task"]).cls
    out = dict(data, model=stand_in, dtype="float32", device="cpu", attribution_buffers="model",
                executor="local", executor_config={}, rehearsal=True, save_model=False, keep_weights=False)
    first = data["seeds"][:1]
    out.update(seeds=first, probe_seeds={p: first for p in data.get("probe_seeds", {})})
    if data.get("evaluate_seeds"):
        out["evaluate_seeds"] = first
    out["tune"] = dict(data["tune"], seeds=data["tune"]["seeds"][:1])
    out["train"] = dict(data["train"], max_steps=STEPS, batch_size=min(2, data["train"]["batch_size"]), grad_accum=1)
    out["prepare"] = dict(data["prepare"], max_steps=STEPS, epochs=1)
    out["task_config"] = {k: v for k, v in data["task_config"].items() if k not in ("target_model", "retain_model")}
    out["task_config"].update(task_cls.rehearsal_config(out["task_config"]))
    out["objective_config"] = {name: {**data["objective_config"].get(name, {}),
                                      **registry.get("objective", name).cls.rehearsal_config(
                                          data["objective_config"].get(name, {}), layers)}
                               for name in data["objectives"]}
    if "relearn" in data.get("probe_config", {}) or "relearn" in data.get("probes", []):
        out["probe_config"] = dict(data.get("probe_config", {}), relearn={"steps": 1})
    if data.get("utility"):
        out["utility_limit"] = 2
    if data["offset"]["enabled"]:
        out["offset"] = dict(data["offset"], small_model=stand_in,
                             prepare=dict(data["offset"].get("prepare", {}), max_steps=STEPS, epochs=1))
    if data["match"]["enabled"]:
        out["match"] = dict(data["match"], level=0.0)  # never reached: a 2-step stand-in target knows ~nothing
        notes.append("matched forgetting: level 0 (never reached: a stand-in target fine-tuned for 2 steps may "
                     "know no more than its retain model), so runs stop at their budget")
    if data.get("generation") == "vllm" and importlib.util.find_spec("vllm") is None:
        out["generation"], out["generation_config"] = "hf", {}
        notes.append("generation: vllm is not installed here, HF generates instead")
    return out


def rehearsal(cfg, stand_in: str = STAND_IN) -> tuple[list, list[str]]:
    """The sweep's grids cut to a rehearsal on `stand_in`, and what was substituted, in words."""
    from transformers import AutoConfig

    from harness.plugins import get_registry
    from harness.run import models
    from harness.sweeps import sweep

    notes = [f"model: {cfg.model} -> {stand_in}, float32 on the CPU, its target and retain models fine-tuned "
             f"here for {STEPS} steps", f"sizes: seed {cfg.seeds[0]} only, {STEPS} unlearning steps, the task's "
             "rehearsal cuts"]
    layers = AutoConfig.from_pretrained(models.resolve(stand_in)).num_hidden_layers
    out = [from_dict(sweep.SweepConfig, _cut(to_dict(one), stand_in, get_registry(), layers, notes), "rehearsal")
           for one in sweep.grids(cfg)]
    return out, list(dict.fromkeys(notes))
