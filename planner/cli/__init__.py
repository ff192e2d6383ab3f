"""`planner`: `main` runs one command line and returns its exit status; the commands do argument checks and output.

Exit status: see EXIT_STATUS. The work is the core's and the executor's: the parser is `planner.cli.parser`, the
commands `planner.cli.validate`, `.folder`, `.simulate` and `.apply`. `apply` and `tiny` check every argument they
can before any work, and before importing torch: a mistake costs what `validate` costs, never a long run.
"""

from __future__ import annotations

import errno
import os
import sys

from planner.cli.common import APPLY_EXTRA, EXIT_STATUS
from planner.cli.parser import parser as build_parser

__all__ = ["APPLY_EXTRA", "EXIT_STATUS", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv) and return its exit status (EXIT_STATUS); argparse's
    usage errors and --help/--version exit through SystemExit as usual."""
    if sys.stdout is None:  # started with stdout closed (`planner show PLAN >&-`): there is nowhere to answer
        if sys.stderr is not None:
            sys.stderr.write("planner: error: standard output is closed: nothing can be written\n")
        return 2
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            return args.run(args, parser)
        finally:
            sys.stdout.flush()  # a reader that left shows up here, in the handler below, not at interpreter exit
    except KeyboardInterrupt:
        sys.stderr.write("planner: interrupted\n")
        return 130
    except BrokenPipeError:
        _discard_output()
        return 141
    except OSError as exc:  # stdout on a full disk or a device that refuses it (planner inspect DIR > /dev/full)
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        _discard_output(keep_stderr=True)
        sys.stderr.write(f"planner: error: cannot write the output: {exc.strerror or exc}\n")
        return 2


# Errors of writing the output itself (not of a file the command reads): a full disk, a quota, a device error.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _discard_output(keep_stderr: bool = False) -> None:
    """Point stdout and stderr at /dev/null, as Python's documentation advises on a broken pipe: what is still
    buffered is flushed there at exit instead of failing again with an "Exception ignored" message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout,) if keep_stderr else (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):  # a stream without a file descriptor (captured, closed)
            pass
    os.close(devnull)
