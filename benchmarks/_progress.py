"""Progress for long benchmark runs: one line per phase on stderr, so stdout keeps only the figures."""

from __future__ import annotations

import sys
import time

_START = time.perf_counter()


def progress(message: str) -> None:
    """Print `message` with the seconds since the benchmark started, at once (stderr is flushed)."""
    print(f"[{time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)
