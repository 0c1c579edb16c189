"""The `unlearn-bench` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from harness import __version__, offline  # not harness.distributed here: it imports torch, and with it tqdm
from harness.config import describe, from_dict, yaml_mapping
from harness.errors import UnlearnBenchError


def cmd_list(args: argparse.Namespace) -> int:
    from harness.plugins import KINDS, get_registry

    registry = get_registry()
    for kind in KINDS:
        print(f"{kind}s:")
        for name in registry.names(kind):
            e = registry.get(kind, name)
            doc = (e.cls.__doc__ or "").strip().splitlines()[0] if e.cls.__doc__ else ""
            print(f"  {name:<14} {e.plugin} ({e.distribution} {e.version})  {doc}")
            if args.verbose:
                for field, typ, default, help_text in describe(e.cls.Config):
                    print(f"      {field} ({typ}, default {default!r}): {help_text}")
    if args.verbose:
        from harness.learn.settings import TrainConfig
        from harness.run.features import MatchConfig
        from harness.run.spec import PrepareConfig

        for title, cfg in (("unlearning settings (a spec's `train:`, harness/learn/settings.py)", TrainConfig),
                           ("preparation settings (a spec's `prepare:`, harness/run/spec.py)", PrepareConfig),
                           ("matched forgetting (a spec's `match:`, harness/measure/match.py)", MatchConfig)):
            print(f"{title}:")
            for field, typ, default, help_text in describe(cfg):
                print(f"      {field} ({typ}, default {default!r}): {help_text}")
    if registry.broken:
        print("skipped plugins:")
        for why in registry.broken.values():
            print(f"  {why}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from harness import conformance

    try:
        configs = json.loads(args.config) if args.config else {}
    except ValueError as exc:
        raise UnlearnBenchError(f"--config is not JSON ({exc})") from None
    failed = 0
    for name in args.names:
        try:
            kind = conformance.check(name, args.model, configs.get(name))
            print(f"{name}: {kind} conforms")
        except UnlearnBenchError as exc:
            if not isinstance(exc, conformance.ConformanceError):
                raise  # an unknown name or a bad config: the usual error line
            failed += 1
            print(f"{name}: FAILED: {exc}")
        except Exception as exc:  # the plugin itself raised: that is a conformance failure too
            failed += 1
            print(f"{name}: FAILED: the plugin raised {type(exc).__name__}: {exc}")
    return 1 if failed else 0


def _spec_from_args(args: argparse.Namespace):
    from harness.run.spec import RunSpec

    data = _yaml_mapping(args.spec, "spec")
    for key in ("task", "model", "attribution", "ratio", "objective", "seed"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    train = {k: getattr(args, k, None) for k in ("lr", "epochs", "max_steps", "batch_size")}
    if any(v is not None for v in train.values()):
        data["train"] = {**(data.get("train") or {}), **{k: v for k, v in train.items() if v is not None}}
    if getattr(args, "match", False):
        data["match"] = {**(data.get("match") or {}), "enabled": True}
    if getattr(args, "probes", None):
        data["probes"] = [p.strip() for p in args.probes.split(",") if p.strip()]
    return from_dict(RunSpec, data, args.spec or "command line")


def cmd_prepare(args: argparse.Namespace) -> int:
    from harness.plugins import get_registry
    from harness.run import prepare
    from harness.run.spec import PrepareConfig

    registry = get_registry()
    task = registry.build("task", args.task, None)
    if task.uses_base_model:
        print(f"{args.task} unlearns the base model itself ({args.model}): nothing to build")
        return 0
    cfg = PrepareConfig()
    for which in ("target", "retain"):
        path, hit = prepare.ensure_model(task, args.model, which, cfg)
        print(f"{which}: {path} ({'cache hit' if hit else 'built'})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness import distributed
    from harness.run import export, runner

    spec = _spec_from_args(args)
    save_to = Path(args.save_model) if args.save_model else None
    if save_to is not None:  # a folder the harness would not replace is refused before anything is written
        export.check_destination(save_to)
    runner.write_reference_records(spec, Path(args.results))  # the target and retain rows, as a sweep writes first
    record = runner.execute(spec, Path(args.results), save_to)
    if distributed.is_main():
        print(json.dumps({k: m["value"] for k, m in record.metrics.items()}, indent=2))
    return 0


def _yaml_mapping(path_text: str | None, what: str) -> dict:
    return yaml_mapping(Path(path_text), what, empty_ok=True) if path_text else {}


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.run import evaluate

    record = evaluate.evaluate_model(args.model, args.task, _yaml_mapping(args.task_config, "task config"),
                                     utility=args.utility or [], utility_limit=args.utility_limit,
                                     retain=args.retain, dtype=args.dtype, device=args.device,
                                     results_dir=Path(args.results), generation=args.generation)
    print(json.dumps({k: m["value"] for k, m in record.metrics.items()}, indent=2))
    print(f"record: {record.path}")
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    from harness.run import runner

    spec = runner.canonical(_spec_from_args(args))
    plan, meta = runner.mask_for(spec)
    if plan.mask is None:
        print(f"{spec.attribution}: no mask (updates {'LoRA adapters' if plan.lora else 'every weight'})")
    else:
        print(f"{meta['path']} (density {meta['density']:.4f}, {'cache hit' if meta['cache_hit'] else 'computed'})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.run import export

    out = export.export(Path(args.results), args.run_id, Path(args.out))
    print(f"{out}: the unlearned model of {args.run_id} (load it with AutoModelForCausalLM, or score it with "
          "`unlearn-bench eval` or lm-eval)")
    return 0


def cmd_mask_report(args: argparse.Namespace) -> int:
    from harness.learn import masks
    from harness.measure import mask_report

    loaded = []
    for folder in args.masks:
        path = Path(folder)
        if not (path / "mask.safetensors").is_file():
            raise UnlearnBenchError(f"{path}: no mask.safetensors here (a folder written by `unlearn-bench mask`)")
        mask, meta = masks.load(path)
        loaded.append((f"{meta.get('method')}@{meta.get('ratio')}:{path.name[-6:]}", mask))
    print(mask_report.report(loaded), end="")
    if args.plot:
        mask_report.heatmap(loaded, Path(args.plot))
        print(f"heatmap: {args.plot}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness import distributed
    from harness.sweeps import sweep

    cfg = sweep.load(Path(args.file))
    named = sweep.addresses(cfg) - {args.address}
    if named and not args.trust_file_address:
        raise UnlearnBenchError(
            f"{args.file} names the cluster address {', '.join(sorted(named))}: the driver runs what a cluster "
            "sends back, so a sweep file cannot choose one alone. Repeat it with --address, or pass "
            "--trust-file-address (docs/scale.md: run Ray only on a network you control)")
    if args.rehearse:
        return _rehearse(cfg, args)
    if args.plan:
        from harness.sweeps import plan

        print(plan.text(plan.rows(cfg, Path(args.results)), plan.machine_rate(), args.gpu))
        return 0
    if args.executor:
        cfg.executor = args.executor
    if args.address:
        cfg.executor_config = dict(cfg.executor_config, address=args.address)
    counts = sweep.run(cfg, Path(args.results), retry_failed=args.retry_failed)
    if distributed.is_main():  # under a launch the main process reports and writes
        print(f"sweep done: {counts['finished']} finished, {counts['skipped']} skipped, "
              f"{counts['failed']} failed, {counts['busy']} running in another sweep")
        if args.leaderboard:
            _write_leaderboard(Path(args.results), Path(args.leaderboard), cfg.task)
    return 1 if counts["failed"] else 0


def _rehearse(cfg, args: argparse.Namespace) -> int:
    """The sweep's grids on a stand-in with every size cut (harness/sweeps/rehearse.py), into their own folder."""
    from harness.sweeps import rehearse, sweep

    grids, notes = rehearse.rehearsal(cfg, args.stand_in)
    results = Path(args.results) / f"rehearsal-{Path(args.file).stem}"
    counts = {"finished": 0, "skipped": 0, "failed": 0, "busy": 0}
    for one in grids:
        for outcome, n in sweep.run(one, results, retry_failed=args.retry_failed).items():
            counts[outcome] += n
    print(f"rehearsal of {args.file} in {results}: {counts['finished']} finished, {counts['skipped']} skipped, "
          f"{counts['failed']} failed. Substituted: " + "; ".join(notes) + ". Not a result: the records say "
          "rehearsal: true")
    return 1 if counts["failed"] else 0


def cmd_memory(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from harness.learn import memory
    from harness.plugins import get_registry
    from harness.run import models

    try:
        config = AutoConfig.from_pretrained(models.resolve(args.model))
    except (OSError, ValueError) as exc:
        raise UnlearnBenchError(f"cannot read the config of model {args.model!r}: {exc}") from exc
    n, largest = memory.shape_of(config)
    reference = get_registry().build("objective", args.objective, {}).needs_reference
    print(f"{args.model}: {n / 1e9:.2f} B parameters, {args.dtype}, ratio {args.ratio:g}, objective "
          f"{args.objective}")
    print(memory.table(memory.estimate(n, largest, args.dtype, args.ratio, reference, args.attribution_buffers,
                                       args.fsdp_processes, getattr(config, "num_hidden_layers", 1))))
    return 0


def _write_leaderboard(results: Path, out: Path, task: str | None, axes: str | None = None) -> None:
    from leaderboard import table

    if out.suffix == ".csv":
        n = table.write(results, out, task)
        print(f"{out}: {n} records")
        return
    pair = None
    if axes:
        pair = tuple(a.strip() for a in axes.split(","))
        if len(pair) != 2 or not all(pair):
            raise UnlearnBenchError(f"--tradeoff-axes {axes!r}: give two metric names, X,Y")
    for path in table.write_all(results, out, task, pair):
        print(path)
    print("Verdicts (declared before the runs; leaderboard.md says how they are decided):")
    for line in table.verdict_lines(results, task):
        print(line)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    if not (Path(args.results_dir) / "runs").is_dir():
        raise UnlearnBenchError(f"{args.results_dir}: no runs/ folder of records here")
    _write_leaderboard(Path(args.results_dir), Path(args.out or Path(args.results_dir) / "leaderboard"), args.task,
                       args.tradeoff_axes)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.run import verify

    chosen = verify.choose(Path(args.results_dir), args.sample, args.seed, args.id)
    print(f"replaying {len(chosen)} record(s) of {args.results_dir} (tolerance {args.tolerance:g})")
    failed = 0
    for record in chosen:
        try:
            r = verify.replay(record, args.tolerance)
        except Exception as exc:  # a run that cannot run again is reported, and the others still replay
            print(f"{record.id}: could not rerun: {type(exc).__name__}: {exc}")
            failed += 1
            continue
        code = "" if r.same_id else " (its plugins' code changed since: the run id differs)"
        if r.reproduced:
            print(f"{r.id}: reproduced, max |Δ| {r.max_diff:.3g}, {r.seconds:.0f} s{code}")
        else:
            failed += 1
            shown = ", ".join(f"{k} {a} → {b}" for k, (a, b) in list(r.differing.items())[:6])
            print(f"{r.id}: DIFFERS in {len(r.differing)} metric(s): {shown}{code}")
    print(f"{len(chosen) - failed} of {len(chosen)} reproduced")
    return 0 if failed == 0 else 1


def cmd_summary(args: argparse.Namespace) -> int:
    from leaderboard import across

    for d in args.results_dirs:
        if not (Path(d) / "runs").is_dir():
            raise UnlearnBenchError(f"{d}: no runs/ folder of records here")
    for path in across.write([Path(d) for d in args.results_dirs], Path(args.out), args.baseline):
        print(path)
    return 0


def _add_spec_arguments(s: argparse.ArgumentParser) -> None:
    """A run spec from a YAML file, with the main fields overridable by flags."""
    s.add_argument("--spec", help="YAML run spec (fields: harness/run/spec.py; plugin configs: unlearn-bench list -v)")
    s.add_argument("--task", help="task name")
    s.add_argument("--model", help="base model: alias, local folder or hub id")
    s.add_argument("--attribution", help="attribution (mask) name")
    s.add_argument("--ratio", type=float, help="fraction of weights updated, in (0, 1]")
    s.add_argument("--objective", help="objective name")
    s.add_argument("--seed", type=int)
    s.add_argument("--probes", help="comma-separated post-unlearning probes run after the evaluation, e.g. "
                                    "quantization,relearn,mia (the spec's `probes:`)")
    t = s.add_argument_group("unlearning settings (the spec's `train:`; every field: harness/learn/settings.py, "
                             "`unlearn-bench list -v`)")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--epochs", type=int, help="passes over the forget set")
    t.add_argument("--max-steps", type=int, help="optimizer steps (overrides epochs)")
    t.add_argument("--batch-size", type=int, help="forget (and retain) examples per micro-batch")
    t.add_argument("--match", action="store_true", help="matched forgetting: stop at the retain model's forget "
                                                        "level (the spec's `match:`, docs/metrics.md)")


def _run_commands(sub) -> None:
    """One run and its parts: list, check, prepare, run, eval, mask, export."""
    s = sub.add_parser("export", help="write a finished run's unlearned model as a Hugging Face folder, from "
                                      "the weights it kept (spec keep_weights: true)")
    s.add_argument("run_id")
    s.add_argument("out", help="folder to write (replaced if it exists)")
    s.add_argument("--results", default="results", help="results directory of the run")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("check", help="run the conformance checks on attributions and objectives (plugin authors)")
    s.add_argument("names", nargs="+", help="registered attribution or objective names")
    s.add_argument("--model", default="tiny-llama", help="model to check on (default: the tiny built-in Llama)")
    s.add_argument("--config", help='JSON mapping name -> config, e.g. \'{"rmu": {"layer": 1}}\'')
    s.set_defaults(func=cmd_check)
    s = sub.add_parser("list", help="every registered attribution, objective and task, with its plugin")
    s.add_argument("-v", "--verbose", action="store_true", help="also show each config field")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("prepare", help="build and cache a task's target and retain reference models")
    s.add_argument("task")
    s.add_argument("--model", default="smollm2-135m", help="base model: alias, local folder or hub id")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("run", help="one run: attribution, unlearning, evaluation, record")
    _add_spec_arguments(s)
    s.add_argument("--results", default="results", help="results directory (records go to RESULTS/runs)")
    s.add_argument("--save-model", metavar="DIR", help="also write the unlearned model as a Hugging Face folder")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("eval", help="score a model on a task without unlearning (checkpoints, references)")
    s.add_argument("model", help="alias, local folder or hub id")
    s.add_argument("--task", required=True, help="task name")
    s.add_argument("--task-config", help="YAML file with the task's config fields")
    s.add_argument("--utility", nargs="*", help="lm-eval tasks to score too, e.g. mmlu_bundled")
    s.add_argument("--utility-limit", type=int, help="lm-eval limit: at most N questions per (sub)task")
    s.add_argument("--retain", help="the retain reference model, for metrics measured against it "
                                    "(TOFU forget quality, MUSE PrivLeak)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--device", default="auto")
    s.add_argument("--generation", default="hf", help="generation backend: hf or vllm")
    s.add_argument("--results", default="results", help="the record goes to RESULTS/runs")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("mask", help="compute and save a mask without unlearning (same flags as run)")
    _add_spec_arguments(s)
    s.set_defaults(func=cmd_mask)

    s = sub.add_parser("mask-report", help="density per module type and layer, and pairwise Jaccard of masks")
    s.add_argument("masks", nargs="+", help="mask folders (printed by `unlearn-bench mask`)")
    s.add_argument("--plot", help="also write a layer x module density heatmap PNG here")
    s.set_defaults(func=cmd_mask_report)



def _sweep_commands(sub) -> None:
    """Grids of runs and what they will cost: sweep, memory."""
    s = sub.add_parser("sweep", help="run a grid from a YAML file; runs with a record are skipped")
    s.add_argument("file")
    s.add_argument("--results", default="results")
    s.add_argument("--leaderboard", help="also write the leaderboard when done: a folder (CSVs, Markdown, HTML, "
                                         "plots) or a .csv path (the per-run CSV only)")
    s.add_argument("--retry-failed", action="store_true", help="run again the runs whose record says failed")
    s.add_argument("--plan", action="store_true", help="run nothing: print every run (tuning first) with its id, "
                                                       "its state in --results and an estimate of its time here "
                                                       "and on --gpu (harness/sweeps/plan.py)")
    s.add_argument("--rehearse", action="store_true", help="run the file's whole grid on a stand-in model with every "
                                                           "size cut, into RESULTS/rehearsal-<file> (harness/"
                                                           "sweeps/rehearse.py): its code paths, not a result")
    s.add_argument("--stand-in", default="tiny-llama", help="the model a rehearsal runs on (smollm2-135m for a "
                                                            "closer look)")
    s.add_argument("--gpu", default="H100", help="the GPU --plan estimates for (H200, H100, A100, L40S, A10, L4)")
    s.add_argument("--executor", help="where runs execute (overrides the file's `executor`): local, ray, or a "
                                      "plugin's executor")
    s.add_argument("--address", help="the cluster to join (overrides executor_config.address), e.g. "
                                     "head-node:6379 for Ray")
    s.add_argument("--trust-file-address", action="store_true",
                   help="join the cluster address the sweep file names (otherwise it must be repeated with --address)")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("memory", help="memory per phase of a run, estimated from the model's config alone")
    s.add_argument("model", help="alias, local folder or hub id (only its config is read)")
    s.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--ratio", type=float, default=0.5, help="fraction of weights updated")
    s.add_argument("--objective", default="npo", help="objective (decides whether a reference copy is held)")
    s.add_argument("--attribution-buffers", default="model", choices=["model", "cpu"])
    s.add_argument("--fsdp-processes", type=int, default=1,
                   help="unlearning sharded over this many processes (accelerate launch --use_fsdp)")
    s.set_defaults(func=cmd_memory)



def _report_commands(sub) -> None:
    """From records: leaderboard, verify, summary."""
    s = sub.add_parser("leaderboard", help="write leaderboard files from stored run records alone")
    s.add_argument("results_dir")
    s.add_argument("--out", help="folder for runs.csv, methods.csv, leaderboard.md, index.html and plots "
                                 "(default RESULTS_DIR/leaderboard), or a .csv path for the per-run CSV only")
    s.add_argument("--task", help="only records of this task")
    s.add_argument("--tradeoff-axes", metavar="X,Y", help="a second trade-off plot on these metrics, e.g. "
                                                          "fp4_b64_forget_rouge,model_utility (default: that "
                                                          "pair where runs were probed with 4-bit quantization)")
    s.set_defaults(func=cmd_leaderboard)

    s = sub.add_parser("verify", help="rerun records of a results folder from their stored specs and check that "
                                      "their metrics reproduce")
    s.add_argument("results_dir")
    s.add_argument("--sample", type=int, help="replay K records drawn at random (default: every one)")
    s.add_argument("--seed", type=int, default=0, help="seed of the draw")
    s.add_argument("--id", action="append", help="replay this record (repeatable)")
    s.add_argument("--tolerance", type=float, default=0.0,
                   help="largest absolute difference still counted as reproduced (0: the same number, as runs on "
                        "the same kind of machine give; across machines, e.g. 1e-4)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("summary", help="across tasks, as rliable reports: IQM of the normalised trade-off score, "
                                       "probability of improvement over a baseline, performance profiles")
    s.add_argument("results_dirs", nargs="+", help="results folders (e.g. one per task)")
    s.add_argument("--out", required=True, help="folder for summary.csv, summary.md and profile.png")
    s.add_argument("--baseline", default="dense", help="attribution the probability of improvement is against")
    s.set_defaults(func=cmd_summary)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn-bench", description="Benchmark harness for LLM unlearning.")
    p.add_argument("--version", action="version", version=f"unlearn-bench {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--online", action="store_true", help="allow downloads from the Hugging Face hub (models, "
                                                         "datasets); default: offline, local files and the hub "
                                                         "cache only (also: UNLEARN_BENCH_ONLINE=1)")
    sub = p.add_subparsers(dest="command", required=True)

    _run_commands(sub)
    _sweep_commands(sub)
    _report_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    if not sys.stderr.isatty():  # piped: no progress bars (tqdm reads this when first imported); log lines say it
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from harness import distributed  # after the line above: it imports torch, which imports tqdm

    args = build_parser().parse_args(argv)
    offline.configure(args.online)  # before any command imports huggingface_hub, which reads them once
    quiet = args.quiet or not distributed.is_main()  # under a launch, progress is logged once
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score's "Using default tokenizer." on every load
    # peft imports bitsandbytes, whose CPU backend asks the Hub for an optional kernel and warns twice when
    # offline, then runs its own code (tests/test_probes.py checks the probe's 4-bit grids against it)
    for name in ("kernels", "bitsandbytes.backends"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.func(args)
    except UnlearnBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
