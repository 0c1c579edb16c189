"""Progress lines for long loops (scoring, generation): one when a loop starts, then at most one every
EVERY seconds, and one at the end, on the harness's log (INFO; `-q` hides them). Log lines, not bars: piped
output stays readable and never hides an `error:` line."""

from __future__ import annotations

import logging
import time

from harness import distributed

EVERY = 30.0
log = logging.getLogger("harness.sweeps.progress")


class Progress:
    """`with Progress("scoring", 880, "answers") as p: ... p.advance(16)`"""

    def __init__(self, what: str, total: int, unit: str = "") -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.quiet = not distributed.is_main() or total == 0

    def __enter__(self) -> Progress:
        if not self.quiet:
            log.info("%s: %d %s", self.what, self.total, self.unit)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.quiet and now - self.last >= EVERY and self.done < self.total:
            self.last = now
            log.info("%s: %d/%d %s (%.0f s)", self.what, self.done, self.total, self.unit, now - self.start)

    def __exit__(self, *exc: object) -> None:
        if not self.quiet and exc[0] is None and time.perf_counter() - self.start >= 1.0:
            log.info("%s: done in %.1f s", self.what, time.perf_counter() - self.start)
