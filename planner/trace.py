"""The transfer trace: which component moved between host and device, in which pipeline call, and its size.

Pure (no torch): the executor drives it from its hooks firing, and a later simulator can drive the same value
from a schedule. It keeps its own residency state per component and records a `load` or an `offload` only when
that state changes, because in a dry run nothing really moves and on a device accelerate skips transfers of
modules already where they should be. Times are given to it (`begin`, `end_call`), never read here, so that a
simulated trace has none.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

# Why a transfer happened, when it is not the plan's own load-before-use or offload-after-use.
EXCLUSION_ROUND_TRIP = "exclusion round trip"  # diffusers' re-install moves the whole pipeline to the CPU first


@dataclass(frozen=True, slots=True)
class Event:
    call: int  # 1-based pipeline call the event belongs to
    event: str  # "load" (host to device) or "offload" (device to host)
    component: str
    bytes: int
    device: str  # the device the component was loaded to or offloaded from
    reason: str | None = None  # set for transfers the plan does not ask for (EXCLUSION_ROUND_TRIP)

    def to_json(self) -> dict:
        """The event as a JSON object; `reason` only when there is one."""
        data = asdict(self)
        if self.reason is None:
            del data["reason"]
        return data


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
    and counted in `dropped_calls`), so that a plan applied for days does not grow without bound. `events` is a
    list in the order things happened: it can be indexed and sliced (`trace.events[-5:]`)."""

    device: str
    sizes: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    resident: set[str] = field(default_factory=set)
    call: int = 1
    calls: dict[int, CallStats] = field(default_factory=dict)
    keep_calls: int = 1000
    dropped_calls: int = 0
    started: float | None = field(default=None, repr=False)  # when the current call began (a clock reading)
    carried: int = 0  # bytes resident when the current call began (kept from the call before)

    def load(self, component: str, reason: str | None = None) -> None:
        if component not in self.resident:
            self.resident.add(component)
            self._record("load", component, reason)

    def offload(self, component: str, reason: str | None = None) -> None:
        if component in self.resident:
            self.resident.discard(component)
            self._record("offload", component, reason)

    def offload_all(self, reasons: Mapping[str, str] | None = None, only: set[str] | None = None) -> None:
        """Offload everything resident (of `only`, when given), in component order; `reasons` labels some."""
        reasons = reasons or {}
        rank = {name: i for i, name in enumerate(self.sizes)}
        resident = self.resident if only is None else self.resident & only
        for component in sorted(resident, key=lambda c: (rank.get(c, len(rank)), c)):
            self.offload(component, reasons.get(component))

    def begin(self, now: float) -> None:
        """The current call started at `now`, unless an earlier reading for it was given already."""
        if self.started is None:
            self.started = now

    def end_call(self, now: float | None = None) -> CallStats:
        """Close the current call (its time is `now` minus `begin`'s reading, when both are known) and drop the
        calls beyond `keep_calls`; returns the closed call's figures."""
        stats = self._stats()
        if now is not None and self.started is not None:
            stats.seconds = now - self.started
        self.started = None
        self.call += 1
        self.carried = self.resident_bytes()
        oldest = self.call - self.keep_calls
        cut = bisect_left(self.events, oldest, key=lambda e: e.call)  # events are in call order
        if cut:
            del self.events[:cut]
        for call in [c for c in self.calls if c < oldest]:
            del self.calls[call]
            self.dropped_calls += 1
        return stats

    def resident_bytes(self) -> int:
        return sum(self.sizes.get(c, 0) for c in self.resident)

    def _stats(self) -> CallStats:
        stats = self.calls.get(self.call)
        if stats is None:  # what stayed on the device from the call before is resident in this one from its start
            stats = self.calls[self.call] = CallStats(self.call, peak_resident_bytes=self.carried)
        return stats

    def _record(self, kind: str, component: str, reason: str | None) -> None:
        size = self.sizes.get(component, 0)
        self.events.append(Event(self.call, kind, component, size, self.device, reason))
        stats = self._stats()
        if kind == "load":
            stats.loaded_bytes += size
            stats.peak_resident_bytes = max(stats.peak_resident_bytes, self.resident_bytes())
        else:
            stats.offloaded_bytes += size

    def to_json(self) -> dict:
        return {"device": self.device, "components": dict(self.sizes), "dropped_calls": self.dropped_calls,
                "events": [e.to_json() for e in self.events],
                "calls": [asdict(s) for _, s in sorted(self.calls.items())]}
