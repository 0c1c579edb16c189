"""Resume a sweep started before 2026-12-04 (when `bf16_autocast: null`, on where bf16 is fast, was the
default) on a CPU with bf16 instructions, computing in fp32 as the machine that started it did:

    cd WORKTREE_AT_THE_SWEEP'S_COMMIT
    PYTHONPATH=. python /path/to/main/experiments/resume_fp32.py sweep FILE --results DIR --leaderboard DIR

It turns the automatic choice off (`fast_bf16` answers no) before the command line runs; the code digest, and
so the run ids, stay those of that commit. Sweeps started since run in fp32 unless their file asks otherwise
and need no launcher (docs/metrics.md, "Precision and machines")."""

import importlib
import importlib.util
import sys

# the flat layout of earlier commits first: an editable install of a later checkout would otherwise answer
# for harness.learn inside an old worktree
train = importlib.import_module("harness.train" if importlib.util.find_spec("harness.train") else "harness.learn.train")
train.fast_bf16 = lambda device: False

from harness.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
