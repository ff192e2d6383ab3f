"""The host's memory, and which streamed blocks to keep in pinned (page-locked) host memory.

Pure (stdlib only): `read_host_memory` reads /proc and the cgroup files once, `HostMemory.spare` says how many
bytes the process may still take without risking the OOM killer, and `choose_pinned` picks the blocks to pin
within that budget under `pin: auto|true|false`.

Pinned memory makes host-to-device copies about twice as fast, but it is charged to the container's cgroup like
any other memory and the kernel can neither swap nor reclaim it: pinning every weight has killed real users'
containers. So the budget is the smaller of what the machine has available and what the container's limit leaves,
less a margin, and pinned bytes never exceed it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from planner.units import human

# Held back from every budget: MemAvailable is the kernel's estimate, not a promise, and the process still grows
# after the plan is made (the CUDA context and torch's runtime take several hundred MiB of host memory, the
# pipeline's CPU-side tensors, tokenizers, the allocator's fragmentation, page cache that mmapped safetensors
# need). At least 1 GiB; on a big host 10% of the smaller of RAM and the container limit, the share of headroom
# container orchestrators commonly keep before they evict.
MARGIN = 1 << 30
MARGIN_PERCENT = 10
# A cgroup v1 "no limit" is PAGE_COUNTER_MAX pages (9223372036854771712 bytes with 4 KiB pages); no host has 1 EiB
# of RAM, so any limit at or above 2**60 means unlimited.
UNLIMITED = 1 << 60
MAX_READ = 1 << 20  # /proc and cgroup files are a few KiB: a longer one is not what it claims to be
PIN_MODES = ("auto", "true", "false")


@dataclass(frozen=True)
class HostMemory:
    """What the host and the container let this process use, in bytes; None where it could not be read.

    `total` and `available`: /proc/meminfo's MemTotal and MemAvailable. `limit`: the tightest memory limit of the
    process's cgroup and its ancestors (None when unlimited or unknown); `usage`: that cgroup's working set (usage
    less its inactive file cache, as `docker stats` and the kubelet count it). `locked_limit`: RLIMIT_MEMLOCK's
    soft limit (None when unlimited or unknown), shown only: CUDA's driver pins host memory itself, and a default
    container's 64 KiB `ulimit -l` does not stop torch's `pin_memory`.
    """

    total: int | None
    available: int | None
    limit: int | None = None
    usage: int | None = None
    locked_limit: int | None = None

    @property
    def margin(self) -> int:
        """The bytes held back from `spare`: `MARGIN`, or `MARGIN_PERCENT` of the smaller of RAM and the limit."""
        known = [n for n in (self.total, self.limit) if n is not None]
        return max(MARGIN, min(known) * MARGIN_PERCENT // 100) if known else MARGIN

    @property
    def headroom(self) -> int | None:
        """What the container's limit leaves (limit less usage, at least 0); None when there is no known limit."""
        if self.limit is None or self.usage is None:
            return None
        return max(self.limit - self.usage, 0)

    @property
    def spare(self) -> int:
        """Bytes the process may still take without risk: min(available, limit - usage) less `margin`, at least 0.

        Conservative when something is unknown: 0 when `available` could not be read (nothing says what the rest
        of the machine uses), and 0 when a limit is known but the cgroup's usage is not. Never raises.
        """
        if self.available is None or (self.limit is not None and self.usage is None):
            return 0
        room = self.available if self.headroom is None else min(self.available, self.headroom)
        return max(room - self.margin, 0)

    @property
    def limited_by(self) -> str:
        """What bounds `spare`: "container" (its memory limit), "host" (available memory) or "unknown"."""
        if self.available is None or (self.limit is not None and self.usage is None):
            return "unknown"
        return "container" if self.headroom is not None and self.headroom < self.available else "host"

    def to_json(self) -> dict:
        return {"total": self.total, "available": self.available, "limit": self.limit, "usage": self.usage,
                "locked_limit": self.locked_limit, "margin": self.margin, "spare": self.spare,
                "limited_by": self.limited_by}


# -- reading the host --------------------------------------------------------------------------------------------
def read_host_memory(*, proc_root: str | os.PathLike = "/proc",
                     cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> HostMemory:
    """The host's memory as /proc/meminfo, the process's cgroup (v2 or v1) and RLIMIT_MEMLOCK report it.

    Never raises: a missing, unreadable or garbled file leaves its field None. Without /proc/meminfo (not Linux),
    total and available come from `os.sysconf` where it offers them (`spare` is 0 when available stays unknown).
    """
    proc, cgroup = Path(proc_root), Path(cgroup_root)
    total, available = _meminfo(proc / "meminfo")
    if total is None:
        total, available = _sysconf_memory()
    if total is not None and available is not None:
        available = min(available, total)
    limit, usage = _cgroup_memory(proc / "self" / "cgroup", cgroup)
    return HostMemory(total=total, available=available, limit=limit, usage=usage, locked_limit=_locked_limit())


def _read(path: Path) -> str | None:
    """The text of a regular file, or None (missing, unreadable, a directory or a pipe, not text, too long)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read
            return None
        with open(path, "rb") as handle:
            data = handle.read(MAX_READ + 1)
        return data.decode("utf-8") if len(data) <= MAX_READ else None
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def _number(text: str) -> int | None:
    """A non-negative decimal integer of at most 20 digits (a 64-bit counter), else None."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def _meminfo(path: Path) -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes from a meminfo file; kernels before 3.14 have no MemAvailable, and
    then it is MemFree + Buffers + Cached - Shmem (page cache the kernel can drop; shared memory it cannot)."""
    fields: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        value = _number(words[0]) if len(words) in (1, 2) else None
        if value is None or (len(words) == 2 and words[1] != "kB"):
            continue
        fields.setdefault(key.strip(), value * 1024 if len(words) == 2 else value)
    total = fields.get("MemTotal") or None  # a zero total is garbage
    available = fields.get("MemAvailable")
    if available is None and "MemFree" in fields:
        free = fields["MemFree"] + fields.get("Buffers", 0) + fields.get("Cached", 0) - fields.get("Shmem", 0)
        available = max(free, fields["MemFree"])
    if total is None or total >= UNLIMITED:
        return None, None
    return total, available


def _sysconf_memory() -> tuple[int | None, int | None]:
    """(physical, free) bytes from `os.sysconf`, each None where the platform does not report it."""
    def pages(name: str) -> int | None:
        try:
            count, size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
        return count * size if count > 0 and size > 0 else None

    total = pages("SC_PHYS_PAGES")
    return total, pages("SC_AVPHYS_PAGES") if total is not None else None


def _locked_limit() -> int | None:
    """RLIMIT_MEMLOCK's soft limit in bytes; None when unlimited or the platform has none."""
    try:
        import resource  # not on Windows

        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    except (ImportError, AttributeError, ValueError, OSError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft < 0 else soft


# -- cgroups ------------------------------------------------------------------------------------------------------
def _cgroup_memory(self_cgroup: Path, root: Path) -> tuple[int | None, int | None]:
    """(limit, usage) of the binding cgroup: of the process's cgroups and their ancestors, in v2 and in v1, the
    one whose limit leaves the least headroom. With no limit anywhere: (None, the process's own cgroup's usage).

    A limit without a readable usage is returned with usage None, so `spare` stays conservative."""
    v2_path, v1_path = _own_paths(_read(self_cgroup) or "")
    levels = [_v2_level(d) for d in _ancestors(root, v2_path)]
    levels += [_v1_level(d) for d in _ancestors(root / "memory", v1_path)]
    limited = [(limit, usage) for limit, usage in levels if limit is not None]
    if limited:
        unknown = [(limit, usage) for limit, usage in limited if usage is None]
        if unknown:
            return min(unknown, key=lambda lu: lu[0])
        return min(limited, key=lambda lu: (lu[0] - lu[1], lu[0]))
    return None, next((usage for _, usage in levels if usage is not None), None)


def _own_paths(text: str) -> tuple[str, str]:
    """The process's cgroup v2 path (line `0::/path`) and v1 memory path (`N:...memory...:/path`), "/" when absent."""
    v2 = v1 = "/"
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        number, controllers, path = parts
        if number == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, path: str) -> list[Path]:
    """`root`/`path` and each of its parents up to `root`, deepest first, keeping the directories that exist.

    A path that is not absolute or climbs (`..`, as a cgroup namespace shows a cgroup outside it) yields the root
    alone; a path missing under `root` (the container sees its own cgroup as the mount's root) falls back to it."""
    names = path.strip().split("/")
    if not path.startswith("/") or ".." in names:
        names = []
    names = [n for n in names if n not in ("", ".")]
    dirs = [root.joinpath(*names[:depth]) for depth in range(len(names), -1, -1)]
    return [d for d in dirs if _is_dir(d)]


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _v2_level(directory: Path) -> tuple[int | None, int | None]:
    """One cgroup v2 directory's (limit, working set). `memory.high` counts as a limit: past it the kernel
    throttles the group hard, and pinned pages cannot be reclaimed to get back under it."""
    limits = [_limit(_read(directory / name)) for name in ("memory.max", "memory.high")]
    known = [limit for limit in limits if limit is not None]
    return (min(known) if known else None), _working_set(directory, "memory.current", ("inactive_file",))


def _v1_level(directory: Path) -> tuple[int | None, int | None]:
    """One cgroup v1 memory directory's (limit, working set)."""
    limit = _limit(_read(directory / "memory.limit_in_bytes"))
    return limit, _working_set(directory, "memory.usage_in_bytes", ("total_inactive_file", "inactive_file"))


def _limit(text: str | None) -> int | None:
    """A limit file's bytes; None for "max", v1's huge "unlimited", 0 (never a real limit) or garbage."""
    value = _number(text) if text is not None else None
    return value if value is not None and 0 < value < UNLIMITED else None


def _working_set(directory: Path, usage_file: str, inactive_keys: tuple[str, ...]) -> int | None:
    """Usage less the inactive file cache (the kernel drops it before it OOM-kills), at least 0; None unread."""
    usage = _number(_read(directory / usage_file) or "")
    if usage is None or usage >= UNLIMITED:
        return None
    stats: dict[str, int] = {}
    for line in (_read(directory / "memory.stat") or "").splitlines():
        key, _, value = line.partition(" ")
        number = _number(value)
        if number is not None:
            stats.setdefault(key, number)
    inactive = next((stats[key] for key in inactive_keys if key in stats), 0)
    return max(usage - min(inactive, usage), 0)


# -- pinning -------------------------------------------------------------------------------------------------------
class PinError(ValueError):
    """`pin: true` asks to pin more than the host can spare. `needed` and `spare` are bytes."""

    def __init__(self, message: str, needed: int, spare: int):
        super().__init__(message)
        self.needed, self.spare = needed, spare


@dataclass(frozen=True)
class Pinning:
    """Which streamed blocks get pinned host copies. `pinned`: their keys (in the order chosen), `pinned_bytes`
    their size; `host_bytes`: what the host copies of every moved block hold, pinned or not; `spare`: the host
    budget the choice was made within (`pinned_bytes <= spare` always); `pin`: the mode; `note`: one sentence."""

    pinned: tuple[str, ...]
    pinned_bytes: int
    host_bytes: int
    spare: int
    pin: str
    note: str

    def to_json(self) -> dict:
        return {"pin": self.pin, "pinned": list(self.pinned), "pinned_bytes": self.pinned_bytes,
                "host_bytes": self.host_bytes, "spare": self.spare, "note": self.note}


def parse_pin(value: object) -> str:
    """"auto", "true" or "false" from those strings or from True/False; ValueError naming what to write otherwise."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str) and value in PIN_MODES:
        return value
    hint = value.strip().lower() if isinstance(value, str) else None
    meant = f" (did you mean {hint!r}?)" if hint in PIN_MODES else ""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise ValueError(f"pin {shown} is not a pin mode{meant}: write pin: auto (pin what the host can spare), "
                     f"true (pin every streamed block) or false (pin nothing)")


def choose_pinned(moved: Mapping[str, tuple[int, int]], pin: str | bool, spare: int, *,
                  host: HostMemory | None = None) -> Pinning:
    """The blocks to pin among `moved` (key -> (bytes, host-to-device transfers per steady call)), within `spare`.

    "false" pins nothing; "auto" pins the most transferred blocks first (a pinned byte saves time each time it
    moves), skipping any that would pass `spare`; "true" pins every block that moves, or raises PinError when they
    pass `spare` (`host`, when given, lets the message name the container limit as the cause). A block with no
    transfers is never pinned: it would hold page-locked RAM for nothing. ValueError on malformed input.
    """
    mode = parse_pin(pin)
    blocks = _checked(moved, spare)
    host_bytes = sum(size for size, _ in blocks.values())
    moving = sorted((k for k, (_, t) in blocks.items() if t > 0), key=lambda k: (-blocks[k][1], -blocks[k][0], k))
    if mode == "false":
        chosen: list[str] = []
    elif mode == "true":
        chosen = moving
        needed = sum(blocks[k][0] for k in chosen)
        if needed > spare:
            raise PinError(_too_much(needed, spare, len(chosen), host), needed, spare)
    else:
        chosen = _greedy(moving, blocks, spare)
    pinned_bytes = sum(blocks[k][0] for k in chosen)
    note = _note(mode, len(chosen), len(moving), pinned_bytes, host_bytes, spare)
    return Pinning(tuple(chosen), pinned_bytes, host_bytes, spare, mode, note)


def _checked(moved: Mapping[str, tuple[int, int]], spare: int) -> dict[str, tuple[int, int]]:
    """`moved` as a dict after checking each entry is (bytes >= 0, transfers >= 0) under a string key."""
    if not _count(spare):
        raise ValueError(f"spare must be a whole number of bytes >= 0, not {spare!r}")
    blocks: dict[str, tuple[int, int]] = {}
    for key, value in moved.items():
        if not isinstance(key, str):
            raise ValueError(f"a moved block's key must be a string, not {key!r}")
        if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_count(n) for n in value)):
            raise ValueError(f"moved[{key!r}] must be (bytes, transfers per call), two whole numbers >= 0, "
                             f"not {value!r}")
        blocks[key] = (value[0], value[1])
    return blocks


def _count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _greedy(order: list[str], blocks: Mapping[str, tuple[int, int]], spare: int) -> list[str]:
    """The blocks of `order` taken in turn while they fit in `spare`; one that does not fit is skipped."""
    chosen, used = [], 0
    for key in order:
        if used + blocks[key][0] <= spare:
            chosen.append(key)
            used += blocks[key][0]
    return chosen


def _too_much(needed: int, spare: int, count: int, host: HostMemory | None) -> str:
    """PinError's message: what pinning needs, what the host can spare and why, and what to write instead."""
    why = ""
    fix = "write pin: auto, or raise the container's memory limit"
    if host is not None and host.limited_by == "container":
        why = (f": the container's memory limit of {human(host.limit)} is the cause, with {human(host.usage)} "
               f"already in use")
    elif host is not None and host.limited_by == "host":
        why = f": {human(host.available)} of the host's memory is available"
        fix = "write pin: auto, or free host memory"
    elif host is not None:
        why = ": the host's free memory could not be read"
    margin = f", after a margin of {human(host.margin)}" if host is not None else ""
    return (f"pin: true pins {count} streamed block(s) of {human(needed)} ({needed} bytes), but the host can spare "
            f"only {human(spare)} ({spare} bytes{margin}){why}; {fix}")


def _note(mode: str, count: int, moving: int, pinned_bytes: int, host_bytes: int, spare: int) -> str:
    """One sentence for `simulate` and the apply summary."""
    if mode == "false":
        return f"pin: false: nothing pinned; {human(host_bytes)} of host copies stay pageable"
    return (f"pin: {mode}: {count} of {moving} streamed block(s) pinned, {human(pinned_bytes)} of the "
            f"{human(host_bytes)} of host copies, within {human(spare)} the host can spare")
