"""The values everything else reads: `Problem`, `PlanError` and the frozen `Plan`, plus `load_plan` / `check` and
`read_plan_bytes`, the one bounded, non-blocking way a plan file is read (at most MAX_PLAN_BYTES)."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

# The largest plan file read: a plan is a few hundred bytes, and a path named by mistake (a log, a disk image,
# /dev/zero) must cost no more than reading this much.
MAX_PLAN_BYTES = 1024 * 1024
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a plan, located in its source.

    `line` and `column` are 1-based; 0 means the problem has no place in a file (a command-line override, a
    pipeline that lacks a component), and formatters then print the path alone.
    """

    path: str
    line: int
    column: int
    rule: str
    message: str
    fix: str = ""
    severity: str = "error"

    @property
    def text(self) -> str:
        """The message and its fix as one sentence, the way every reporter shows it."""
        return f"{self.message}: {self.fix}" if self.fix else self.message

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}" if self.line else self.path
        return f"{where}: {self.rule} {self.text}"


class PlanError(Exception):
    """A plan that cannot be used; `problems` holds every reason, in source order."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Plan:
    """A checked plan: the offload sequence in order and where each thing goes.

    `locations` maps a key such as `device` or `components.unet` to its (line, column) in the source, so the
    executor can point at the plan when the pipeline disagrees with it.
    """

    path: str
    version: int
    device: str
    gpu_id: int | None
    sequence: tuple[str, ...]
    exclude: frozenset[str]
    edges: tuple[tuple[str, str], ...]
    policy: str = "chain"
    pipeline_class: str | None = None
    pipeline_source: str | None = None
    torch_dtype: str | None = None
    variant: str | None = None
    locations: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "locations", MappingProxyType(dict(self.locations)))

    @property
    def offload_seq(self) -> str:
        """The sequence in diffusers' `model_cpu_offload_seq` spelling."""
        return "->".join(self.sequence)

    def problem(self, key: str, rule: str, message: str, fix: str = "") -> Problem:
        """A problem located at `key` of this plan's source (or at the file when the key has no place)."""
        line, column = self.locations.get(key, (0, 0))
        return Problem(self.path, line, column, rule, message, fix)


def check(path: str | Path, overrides: Mapping[str, object] | None = None) -> list[Problem]:
    """Every problem of the plan file at `path` (empty when it is valid); never raises for a bad plan."""
    return _build(path, overrides)[1]


def load_plan(path: str | Path, overrides: Mapping[str, object] | None = None) -> Plan:
    """The `Plan` in the file at `path`, with command-line style `overrides` (such as {"device": "xpu"}) applied
    and checked by the same rules; raises `PlanError` with every problem found."""
    plan, problems = _build(path, overrides)
    if problems:
        raise PlanError(problems)
    return plan


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
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the stat and the open
            raise PlanError([_unreadable(path, f"{path} is {_kind(mode)}, not a plan file")])
        chunks, size = [], 0
        while size <= MAX_PLAN_BYTES:
            chunk = os.read(fd, MAX_PLAN_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise PlanError([_unreadable(path, f"cannot read {path}: {exc.strerror or exc}")]) from None
    finally:
        os.close(fd)
    if size > MAX_PLAN_BYTES:  # it grew after the stat
        raise PlanError([_too_large(path)])
    return b"".join(chunks)


def _unreadable(path: str, message: str, fix: str = "name a plan file (a regular file of at most 1 MiB)") -> Problem:
    return Problem(path, 0, 0, "PLN000", message, fix)


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
    return _unreadable(path, f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions")


def _target(link: str) -> str:
    try:
        return os.readlink(link)
    except OSError:  # removed meanwhile
        return "?"


def _build(path, overrides):
    from planner import loader, rules

    path = os.fsdecode(path)
    try:
        raw = read_plan_bytes(path)
    except PlanError as exc:
        return None, exc.problems
    return rules.check_document(loader.load(raw, path), overrides)
