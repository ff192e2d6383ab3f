"""Opening the files of a model folder without blocking or reading without bound: regular files only (a FIFO or a
device put where a weights file was expected is refused, never waited on, and named for what it is), small JSON
documents read up to a limit, and within what is left of the folder's `Budget`.

Symbolic links are followed wherever they point, out of the folder too: the hub cache's snapshots are links into
its `blobs/` folder. What a link leads to is judged as the file itself would be (a link to a FIFO is refused as a
FIFO is), and a link to nothing is named with its target.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

from planner.folder.bounds import MAX_JSON_BYTES, Budget, cut

__all__ = ["MAX_JSON_BYTES", "REGULAR", "describe", "open_regular", "read_json", "unreadable"]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
REGULAR = "a regular file"


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path) -> tuple[BinaryIO, int]:
    """A regular file opened for reading, and its size; OSError for anything else, its strerror saying what it is
    (`a named pipe (FIFO), not a regular file`). The open does not block, so a named pipe put where a weights file
    was expected is refused instead of waited on."""
    fd = os.open(path, _OPEN_FLAGS)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{_kind(info.st_mode)}, not a regular file")
    return os.fdopen(fd, "rb"), info.st_size


def describe(path: str | Path) -> str | None:
    """What is at `path`, in words: REGULAR for a regular file (or a link to one), else `a folder`, `a named pipe
    (FIFO)`, `a character device`, `a symbolic link to a folder`, `a symbolic link to nothing (to ../blobs/ab12)`,
    `a symbolic link loop`, ...; None when nothing is there at all."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return None if exc.errno in (errno.ENOENT, errno.ENOTDIR) else f"unreadable ({exc.strerror or exc})"
    if not stat.S_ISLNK(info.st_mode):
        return _kind(info.st_mode)
    try:
        target = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        try:
            return f"a symbolic link to nothing (to {cut(os.readlink(path))})"
        except OSError:
            return "a symbolic link to nothing"
    kind = _kind(target.st_mode)
    return kind if kind == REGULAR else f"a symbolic link to {kind}"


def unreadable(path: str | Path, exc: OSError) -> str:
    """Why `path` cannot be read, for a message: what it is when it is no regular file (a link to nothing included),
    else the system's reason."""
    if exc.errno in (errno.ENOENT, errno.ELOOP):
        what = describe(path)
        if what is not None and what != REGULAR:
            return f"{what}, not a regular file"
    return exc.strerror or str(exc)


def read_json(path: Path, budget: Budget | None = None) -> tuple[object, str | None]:
    """(document, None) of a small JSON file, or (None, why it cannot be used): unreadable, not a regular file,
    larger than MAX_JSON_BYTES, past what is left of `budget` (bytes to read, JSON values to decode: a `Past`
    says so, and the budget is spent), not JSON."""
    try:
        f, size = open_regular(path)
        with f:
            if size > MAX_JSON_BYTES:
                return None, f"{path.name} is larger than {MAX_JSON_BYTES:,} bytes ({size:,})"
            past = budget.take(size, path.name) if budget is not None else None
            if past:
                return None, past
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {path.name}: {unreadable(path, exc)}"
    if budget is not None:  # a file that grew while read
        budget.bytes = max(0, budget.bytes - max(0, len(raw) - size))
    if len(raw) > MAX_JSON_BYTES:
        return None, f"{path.name} is larger than {MAX_JSON_BYTES:,} bytes"
    past = budget.decode(raw, path.name) if budget is not None else None
    if past:
        return None, past
    try:
        return json.loads(raw.decode("utf-8")), None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"{path.name} is not valid JSON ({cut(str(exc))})"
