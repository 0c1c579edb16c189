"""The two-level bootstrap's replay of runs under question draws: ours (every draw at once in numpy arrays:
leaderboard/questions.py's tradeoff_scores and at_matches) against the reference approach (one draw at a time
through harness/measure/match.py's scalar tradeoff_score and at_match, which matched forgetting itself uses), on
a committed board's records. Both must give the same numbers bit for bit.

    python -m benchmarks.two_level [--records leaderboards/verdicts-tofu-mini/records] [--runs 20]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import median_time
from harness.measure import match
from leaderboard import questions
from leaderboard.table import read_records


def reference_replay(record: dict, metric: str, w: dict[str, np.ndarray]) -> np.ndarray:
    """One draw at a time, through the scalar functions."""
    e, u, reference, defined = questions.trajectories(record, w)
    out = np.full(len(e), np.nan)
    for b in np.flatnonzero(defined):
        points = list(zip(e[b].tolist(), u[b].tolist(), strict=True))
        if metric == "tradeoff_score":
            out[b] = match.tradeoff_score(points)
        else:
            rel = match.at_match(points)
            out[b] = np.nan if rel is None else rel * reference[b]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", default="leaderboards/verdicts-tofu-mini/records")
    p.add_argument("--runs", type=int, default=20, help="run records replayed")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (the median is reported)")
    args = p.parse_args()
    runs = [r for r in read_records(args.records) if r.get("kind", "run") == "run" and questions.has_questions(r)]
    runs = runs[: args.runs]
    w = questions.draws(runs[0]["match"]["questions"], questions.RESAMPLES, np.random.default_rng(0))

    def every(fn):
        return lambda: [fn(r, metric, w) for r in runs for metric in questions.METRICS]

    ours, ref = every(questions.replay)(), every(reference_replay)()
    same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(ours, ref, strict=True))
    t_ours, t_ref = median_time(every(questions.replay), args.repeats), median_time(every(reference_replay),
                                                                                       args.repeats)
    print(f"{len(runs)} runs × {len(questions.METRICS)} metrics × {questions.RESAMPLES} question draws")
    print(f"ours (arrays): {t_ours:.2f} s   reference (one draw at a time): {t_ref:.2f} s   "
          f"ratio {t_ours / t_ref:.3f}×   identical: {same}")


if __name__ == "__main__":
    main()
