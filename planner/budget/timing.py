"""The time model of one steady call: seconds of host-to-device transfer, and the part compute does not hide.

Compute comes per block: one figure for every block (`block_seconds=0.002`), or a `BlockTimes` table per block kind
(a block's name without its index, `transformer_blocks.7` -> `transformer_blocks`, per component or for all of
them), or any callable `(component, block) -> seconds`. The exposed time is split by component and by its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Union

from planner.blocknames import REST
from planner.budget.blocks import BlockSchedule, Model, forwards

GB = 10 ** 9


# Host-to-device bandwidth defaults (bytes per second): what a PCIe 4.0 x16 link sustains from pinned memory, and
# about half of it from pageable memory (the driver copies through a pinned staging buffer).
PINNED_BANDWIDTH = 24 * GB


PAGEABLE_BANDWIDTH = 12 * GB


# Why a transfer stays exposed (the compute waits for it).
HELD = "held blocks copied before the forward starts"
STREAM = "streamed block copy longer than the compute of the block before it"
NO_PREFETCH = "no prefetch"
REASONS = (HELD, STREAM, NO_PREFETCH)
REASON_KEYS = {HELD: "held_s", STREAM: "stream_s", NO_PREFETCH: "no_prefetch_s"}

DEFAULT = "default"  # the table's kind for every block (REST aside) no other entry names


def block_kind(block: str) -> str:
    """A block's kind: its name without its trailing index (`transformer_blocks.7` -> `transformer_blocks`,
    `text_model.encoder.layers.3` -> `text_model.encoder.layers`); a name without one is its own kind."""
    return re.sub(r"\.[0-9]+$", "", block)


@dataclass(frozen=True)
class BlockTimes:
    """Compute seconds per block kind: `table` maps `component/kind`, `kind` (in every component) or `default` to
    seconds; a block takes the first of its `component/kind`, its `kind`, `default` (REST: only when named, as
    `rest` or `component/rest`; else 0)."""

    table: Mapping[str, float]

    def __post_init__(self):
        object.__setattr__(self, "table", MappingProxyType(dict(self.table)))

    @classmethod
    def from_ms(cls, table: Mapping[str, float]) -> "BlockTimes":
        return cls({kind: ms / 1000 for kind, ms in table.items()})

    def __call__(self, component: str, block: str) -> float:
        kind = block_kind(block)
        for key in (f"{component}/{kind}", kind):
            if key in self.table:
                return self.table[key]
        return 0.0 if block == REST else self.table.get(DEFAULT, 0.0)

    def unmatched(self, keys: Iterable[tuple[str, str]]) -> list[str]:
        """The table's kinds (`default` aside) that name no block among `keys` ((component, block) pairs)."""
        kinds = {k for c, b in keys for k in (f"{c}/{block_kind(b)}", block_kind(b))}
        return [kind for kind in self.table if kind != DEFAULT and kind not in kinds]

    def to_json(self) -> dict:
        return {kind: seconds * 1000 for kind, seconds in self.table.items()}

    def describe(self) -> str:
        return ", ".join(f"{kind} {seconds * 1e3:g} ms" for kind, seconds in self.table.items())


BlockSeconds = Union[float, BlockTimes, Mapping[tuple[str, str], float], Callable[[str, str], float]]


def per_block(block_seconds: BlockSeconds) -> Callable[[str, str], float]:
    """`block_seconds` as a function of (component, block): a number for every block but REST, a mapping of
    (component, block) to seconds (0 for a block it lacks), or a callable as it is."""
    if isinstance(block_seconds, (int, float)):
        value = float(block_seconds)
        return lambda component, block: 0.0 if block == REST else value
    if isinstance(block_seconds, Mapping):
        table = block_seconds
        return lambda component, block: float(table.get((component, block), 0.0))
    return block_seconds


def regrouped(block_seconds: BlockSeconds, original: Model, grouped: Model) -> BlockSeconds:
    """`block_seconds` for a schedule on `grouped`, a model whose components merge blocks of `original` into REST
    (whole components; group offloading's top-level groups): a merged REST computes its own time and that of each
    block it absorbed that runs in the component's forwards of `original` (an autoencoder used both to encode and
    to decode counts both). A single figure stays as it is, every block's but REST's (as before)."""
    if isinstance(block_seconds, (int, float)):
        return block_seconds
    per = per_block(block_seconds)
    ran: dict[str, set[str]] = {}
    for p in original.forwards:
        ran.setdefault(p.component, set()).update(p.blocks)
    absorbed = {c: tuple(b for b in original.blocks[c] if b in ran.get(c, ()) and b != REST
                         and b not in grouped.blocks.get(c, {})) for c in original.blocks}

    def seconds(component: str, block: str) -> float:
        if block != REST:
            return per(component, block)
        return per(component, REST) + sum(per(component, b) for b in absorbed.get(component, ()))

    return seconds


@dataclass(frozen=True)
class Exposure:
    """One component's exposed seconds in a steady call, by reason (`by_reason`: reason -> seconds), and the
    forward of it where the most accrued (`worst`: its index in the call, use, step and seconds)."""

    component: str
    by_reason: Mapping[str, float]
    worst: tuple[int, int, int, float]

    @property
    def total(self) -> float:
        return sum(self.by_reason.values())

    def main_reason(self) -> str:
        return max(REASONS, key=lambda r: self.by_reason.get(r, 0.0))

    def to_json(self) -> dict:
        index, use, step, seconds = self.worst
        return {"exposed_s": self.total, **{REASON_KEYS[r]: self.by_reason.get(r, 0.0) for r in REASONS},
                "worst_forward": {"index": index, "use": use, "step": step, "exposed_s": seconds}}


@dataclass(frozen=True)
class Timing:
    """Seconds per steady-state call: `transfer` (every host-to-device copy at its bandwidth), `exposed` (the
    part that compute does not hide: the call takes compute plus exposed), `hidden` = transfer - exposed, and
    `compute` (the blocks' compute time given, 0 when none was); `exposure` splits exposed by component (those with
    some, the most first) and reason."""

    transfer: float
    exposed: float
    compute: float
    exposure: tuple[Exposure, ...] = field(default=(), compare=False)

    @property
    def hidden(self) -> float:
        return self.transfer - self.exposed

    def to_json(self) -> dict:
        return {"transfer_s": self.transfer, "exposed_s": self.exposed, "hidden_s": self.hidden,
                "compute_s": self.compute, "exposed_by_component": {e.component: e.to_json() for e in self.exposure}}


def timing(schedule: BlockSchedule, *, pinned: frozenset[tuple[str, str]] = frozenset(),
           pinned_bandwidth: float = PINNED_BANDWIDTH, pageable_bandwidth: float = PAGEABLE_BANDWIDTH,
           block_seconds: BlockSeconds = 0.0) -> Timing:
    """The time model of one steady call, forward by forward, with one copy engine: a held block not on the
    device is copied before its forward computes; a streamed block is copied before it runs: with prefetch its
    copy may start once the streamed block two before it has finished (two slots: one computing, one arriving),
    without prefetch only when the compute reaches it. Each block computes for its `block_seconds` (`per_block`: a
    number is every block's but REST's). `pinned` blocks copy at `pinned_bandwidth`, the others at
    `pageable_bandwidth` (bytes per second). The compute waits for a held copy (HELD), for a streamed copy not done
    when the block before it ends (STREAM), or without prefetch for every streamed copy (NO_PREFETCH)."""
    model = schedule.model
    compute_of = per_block(block_seconds)

    def seconds(key: tuple[str, str]) -> float:
        return model.size(key) / (pinned_bandwidth if key in pinned else pageable_bandwidth)

    on: set[tuple[str, str]] = set()
    result = Timing(0.0, 0.0, 0.0)
    stream_reason = STREAM if model.prefetch else NO_PREFETCH
    for _ in range(2):  # the second call is the steady one
        transfer = compute = clock = 0.0
        exposed: dict[str, dict[str, float]] = {}
        worst: dict[str, tuple[int, int, int, float]] = {}
        for f in forwards(schedule):
            waits = exposed.setdefault(f.component, {})
            here = 0.0
            for key in ((f.component, b) for b in f.held if (f.component, b) not in on):
                on.add(key)
                transfer += seconds(key)
                clock += seconds(key)
                if seconds(key):
                    waits[HELD] = waits.get(HELD, 0.0) + seconds(key)
                    here += seconds(key)
            begun, engine, ends = clock, clock, []
            for b in f.blocks:
                took = compute_of(f.component, b)
                if b == REST and not took:  # the embeddings and the output layers: no compute time given
                    continue
                if b in f.streamed:
                    key = (f.component, b)
                    ready = (ends[-2] if len(ends) >= 2 else begun) if model.prefetch else clock
                    engine = max(engine, ready) + seconds(key)
                    transfer += seconds(key)
                    if engine > clock:
                        waits[stream_reason] = waits.get(stream_reason, 0.0) + engine - clock
                        here += engine - clock
                    clock = max(clock, engine) + took
                    ends.append(clock)
                else:
                    clock += took
                compute += took
            on.difference_update((f.component, b) for b in f.drop_after)
            if here > worst.get(f.component, (0, 0, 0, 0.0))[3]:
                worst[f.component] = (f.index, f.use, f.step, here)
        exposure = tuple(sorted((Exposure(c, MappingProxyType(w), worst[c]) for c, w in exposed.items()
                                 if c in worst), key=lambda e: -e.total))
        result = Timing(transfer, clock - compute, compute, exposure)
    return result
