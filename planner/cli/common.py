"""What every `planner` command shares: its exit status words, and exiting with a usage error or a problem report.

`usage` exits 2 (SystemExit, through argparse); `fail` and `fail_lines` write the problems and return 1.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
import time

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
    """Exit 1 with each problem on one line of stderr (escaped and cut as every report is), at most
    MAX_PROBLEMS_PER_FILE of them and the rest counted, for commands that read no plan file: a summary counting
    plans would say nothing true."""
    from planner.report.common import MAX_PROBLEMS_PER_FILE, clip, plural

    for problem in problems[:MAX_PROBLEMS_PER_FILE]:
        sys.stderr.write(clip(visible(str(problem))) + "\n")
    if len(problems) > MAX_PROBLEMS_PER_FILE:
        sys.stderr.write(f"... and {plural(len(problems) - MAX_PROBLEMS_PER_FILE, 'more problem')}\n")
    return 1


def fail(problems: list[Problem]) -> int:
    from planner.report import text

    sys.stderr.write(text.render(problems, sorted({p.path for p in problems})))
    return 1


WORKING_DELAY = 1.0  # seconds of silence before long work says what it is doing


@contextlib.contextmanager
def working(command: str, what: str, args=None):
    """Around work that may take seconds (a block solve, a long simulation): after WORKING_DELAY, one line on
    stderr, `planner COMMAND: WHAT...`, ended with `done in X s` (or a bare line break when the work fails). Only
    when stderr is a terminal, and with --format json only when stdout is one too (a JSON pipe stays quiet)."""
    stream = sys.stderr
    if not _is_terminal(stream) or (getattr(args, "format", None) == "json" and not _is_terminal(sys.stdout)):
        yield
        return
    started, said = time.monotonic(), threading.Event()

    def say():
        stream.write(f"planner {command}: {what}...")
        stream.flush()
        said.set()

    timer = threading.Timer(WORKING_DELAY, say)
    timer.daemon = True
    timer.start()
    ended = "\n"
    try:
        yield
        ended = f" done in {time.monotonic() - started:.1f} s\n"
    finally:
        timer.cancel()
        timer.join()  # a line being written is finished before the end is written after it
        if said.is_set():
            stream.write(ended)
            stream.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed stream
        return False
