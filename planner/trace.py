"""The transfer trace: which component moved between host and device, in which pipeline call, and its size.

Pure (no torch): the executor drives it from its hooks firing, and a later simulator can drive the same value
from a schedule. It keeps its own residency state per component and records a `load` or an `offload` only when
that state changes, because in a dry run nothing really moves and on a device accelerate skips transfers of
modules already where they should be.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, slots=True)
class Event:
    call: int  # 1-based pipeline call the event belongs to
    event: str  # "load" (host to device) or "offload" (device to host)
    component: str
    bytes: int
    device: str  # the device the component was loaded to or offloaded from


@dataclass(slots=True)
class CallStats:
    call: int
    loaded_bytes: int = 0
    offloaded_bytes: int = 0
    peak_resident_bytes: int = 0
    seconds: float | None = None


@dataclass
class Trace:
    """Events and per-call figures of the last `keep_calls` calls (older ones are dropped at the end of a call,
    and counted in `dropped_calls`), so that a plan applied for days does not grow without bound."""

    device: str
    sizes: dict[str, int] = field(default_factory=dict)
    events: deque = field(default_factory=deque)
    resident: set[str] = field(default_factory=set)
    call: int = 1
    calls: dict[int, CallStats] = field(default_factory=dict)
    keep_calls: int = 1000
    dropped_calls: int = 0

    def load(self, component: str) -> None:
        if component not in self.resident:
            self.resident.add(component)
            self._record("load", component)

    def offload(self, component: str) -> None:
        if component in self.resident:
            self.resident.discard(component)
            self._record("offload", component)

    def offload_all(self) -> None:
        rank = {name: i for i, name in enumerate(self.sizes)}
        for component in sorted(self.resident, key=lambda c: (rank.get(c, len(rank)), c)):
            self.offload(component)

    def end_call(self) -> None:
        self._stats()
        self.call += 1
        oldest = self.call - self.keep_calls
        while self.events and self.events[0].call < oldest:
            self.events.popleft()
        for call in [c for c in self.calls if c < oldest]:
            del self.calls[call]
            self.dropped_calls += 1

    def resident_bytes(self) -> int:
        return sum(self.sizes.get(c, 0) for c in self.resident)

    def _stats(self) -> CallStats:
        stats = self.calls.get(self.call)
        if stats is None:
            stats = self.calls[self.call] = CallStats(self.call)
        return stats

    def _record(self, kind: str, component: str) -> None:
        size = self.sizes.get(component, 0)
        self.events.append(Event(self.call, kind, component, size, self.device))
        stats = self._stats()
        if kind == "load":
            stats.loaded_bytes += size
            stats.peak_resident_bytes = max(stats.peak_resident_bytes, self.resident_bytes())
        else:
            stats.offloaded_bytes += size

    def to_json(self) -> dict:
        return {"device": self.device, "components": dict(self.sizes), "dropped_calls": self.dropped_calls,
                "events": [asdict(e) for e in self.events],
                "calls": [asdict(s) for _, s in sorted(self.calls.items())]}
