"""Reading a plan file's bytes, bounded and without blocking: at most MAX_PLAN_BYTES of a regular file, or one
located PLN000 problem naming the path and what it is (a folder, a FIFO, a device, a dangling link, too large).

`read_plan_bytes` raises `PlanError`; `read_bounded` (also the text report's source-line reader) raises
`NotRegular` for an open file that is not a regular one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from planner.plan import PlanError, Problem
from planner.rules import PLN000

# The largest plan file read: a plan is a few hundred bytes, and a path named by mistake (a log, a disk image,
# /dev/zero) must cost no more than reading this much.
MAX_PLAN_BYTES = 1024 * 1024


_NOT_A_PLAN = "name a plan file (a regular file of at most 1 MiB)"


_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def read_plan_bytes(path: str | Path) -> bytes:
    """The bytes of the plan file at `path`; raises `PlanError` with one PLN000 problem naming the path and what
    it is when it is not a regular file of at most MAX_PLAN_BYTES bytes (a folder, a FIFO, a device, a dangling
    symlink, a file that cannot be opened). Never blocks and never reads more than MAX_PLAN_BYTES + 1 bytes: the
    path is stat'ed before anything is opened, and the open is non-blocking in case a FIFO replaced the file."""
    path = os.fsdecode(path)
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        raise PlanError([_missing(path, exc)]) from None
    if not stat.S_ISREG(info.st_mode):
        raise PlanError([_unreadable(path, f"{path} is {_kind(info.st_mode)}, not a plan file")])
    if info.st_size > MAX_PLAN_BYTES:
        raise PlanError([_too_large(path)])
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise PlanError([_missing(path, exc)]) from None
    try:
        raw = read_bounded(fd, MAX_PLAN_BYTES)
    except NotRegular as exc:  # replaced between the stat and the open
        raise PlanError([_unreadable(path, f"{path} is {_kind(exc.mode)}, not a plan file")]) from None
    except OSError as exc:
        raise PlanError([_unreadable(path, f"cannot read {path}: {exc.strerror or exc}", None)]) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_PLAN_BYTES:  # it grew after the stat
        raise PlanError([_too_large(path)])
    return raw


class NotRegular(OSError):
    """An open file that is not a regular file (a FIFO or a device put where the file was); `mode` says what."""

    def __init__(self, mode: int):
        super().__init__(f"not a regular file (mode {mode:o})")
        self.mode = mode


def read_bounded(fd: int, limit: int) -> bytes:
    """At most `limit` + 1 bytes of the open file `fd` (one more than `limit` shows it is longer), which must be a
    regular file (else `NotRegular`), so a read never blocks and never grows without bound. Shared by the plan
    reader and the text report's source lines."""
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode):
        raise NotRegular(opened.st_mode)
    # asked for by its size (one byte more, to see it end): os.read allocates all it is asked for
    chunks, size, wanted = [], 0, min(limit, opened.st_size) + 1
    while size <= limit:
        chunk = os.read(fd, wanted)
        chunks.append(chunk)
        size += len(chunk)
        if len(chunk) < wanted:  # a regular file gives less than asked only at its end
            break
        wanted = min(limit + 1 - size, 1 << 16)  # it grew since: read on, within the bound
    return b"".join(chunks)


def _unreadable(path: str, message: str, fix: str | None = _NOT_A_PLAN) -> Problem:
    """A PLN000 problem of `path`; fix None for the rule's own ("check the path and its permissions")."""
    return PLN000.problem(path, message, fix)


def _too_large(path: str) -> Problem:
    return _unreadable(path, f"{path} is larger than the {MAX_PLAN_BYTES} bytes (1 MiB) a plan file may have",
                       "a plan is a few hundred bytes: check that this is the plan file")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def _missing(path: str, exc: Exception) -> Problem:
    """The PLN000 problem of a `path` that cannot be opened, in words that name it."""
    check = "check the path"
    if isinstance(exc, ValueError):
        return _unreadable(path, f"{path!r} is no path (it holds a NUL byte)", check)
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return _unreadable(path, f"{path} is a symbolic link to {_target(path)!r}, which does not exist",
                           "point the link at the plan file, or name the plan file itself")
    if exc.errno == errno.ENOENT:
        return _unreadable(path, f"{path} does not exist", check)
    if exc.errno == errno.EACCES:
        return _unreadable(path, f"{path} cannot be read: permission denied",
                           "check the permissions of the file and of the folders above it")
    if exc.errno == errno.ELOOP:
        return _unreadable(path, f"{path} is a loop of symbolic links", check)
    if exc.errno == errno.ENOTDIR:
        return _unreadable(path, f"{path} cannot be reached: a part of it is a file, not a folder", check)
    return _unreadable(path, f"cannot read {path}: {exc.strerror or exc}", None)


def _target(link: str) -> str:
    try:
        return os.readlink(link)
    except OSError:  # removed meanwhile
        return "?"
