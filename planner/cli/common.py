"""What every `planner` command shares: its exit status words, and exiting with a usage error or a problem report.

`usage` exits 2 (SystemExit, through argparse); `fail` and `fail_lines` write the problems and return 1.
"""

from __future__ import annotations

import os
import stat
import sys

from planner.plan import Problem
from planner.report.common import visible

EXIT_STATUS = """\
exit status:
  0    all good
  1    a problem was found (a plan, a pipeline, a run)
  2    a usage error (a bad flag, a missing file, an output that cannot be written, a missing extra)
  130  interrupted (Ctrl-C)
  141  the output was closed early (planner show PLAN | head -1), as for any Unix tool"""
APPLY_EXTRA = "pip install 'offload-planner[apply]'"


CHUNK = 1 << 16  # what a pipe holds: a larger write(2) that the reader leaves part-way returns a short count, no error


def write(text: str) -> None:
    """`text` on stdout; an output encoding that cannot show a name's characters gets escapes, never a failure.

    Written and flushed a pipe's worth at a time: a reader that leaves in the middle of one large write(2) makes it
    return short, without EPIPE, and Python drops the rest silently (exit 0 under `| head -c 1`); the next chunk's
    write then raises BrokenPipeError, which `planner.cli.main` turns into 141."""
    for start in range(0, len(text), CHUNK):
        _write(text[start:start + CHUNK])
        sys.stdout.flush()


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        encoding = sys.stdout.encoding or "ascii"
        sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))


def visible_text(text: str) -> str:
    """`text` with every line's names shown as data (`visible`), its line breaks kept."""
    return "\n".join(visible(line) for line in text.split("\n"))


def progress(args) -> bool:
    """Progress bars on stderr: only on a terminal, and not with --quiet."""
    try:
        return not args.quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def require_apply_extra(parser, command: str) -> None:
    """Exit 2 naming the extra to install when the executor's dependencies are missing (a core-only install)."""
    from planner.executor import missing

    absent = missing()
    if absent:
        usage(parser, command, f"needs the apply extra ({', '.join(absent)} not installed): {APPLY_EXTRA}")


def existing(path: str, parser, command: str) -> str:
    """`path`, or exit 2 when it is not a regular file (a FIFO or a device would block or never end)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        usage(parser, command, f"{path}: no such file")
    except (OSError, ValueError) as exc:
        usage(parser, command, f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}")
    if stat.S_ISDIR(info.st_mode):
        usage(parser, command, f"{path}: is a folder: name a plan file (planner validate takes folders)")
    if not stat.S_ISREG(info.st_mode):
        usage(parser, command, f"{path}: not a regular file: name a plan file")
    return path


def usage(parser, command: str, message: str) -> None:
    """Exit 2 with one line, `planner COMMAND: error: MESSAGE` (argparse's words, without the usage dump)."""
    parser.exit(2, f"{parser.prog} {command}: error: {message}\n")


def fail_lines(problems: list[Problem]) -> int:
    """Exit 1 with each problem on one line of stderr (escaped as every report is), for commands that read no
    plan file: a summary counting plans would say nothing true."""
    for problem in problems:
        sys.stderr.write(visible(str(problem)) + "\n")
    return 1


def fail(problems: list[Problem]) -> int:
    from planner.report import text

    sys.stderr.write(text.render(problems, sorted({p.path for p in problems})))
    return 1
