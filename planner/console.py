"""The `planner` console script: imports the CLI inside a guard, so that Ctrl-C while the CLI's modules are still
being imported (the first few tenths of a second) also ends with one line and exit 130, never a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from planner.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("planner: interrupted\n")
        return 130
    return run()
