"""The time model of one steady call: seconds of host-to-device transfer, and the part compute does not hide."""

from __future__ import annotations

from dataclasses import dataclass

from planner.blocknames import REST
from planner.budget.blocks import BlockSchedule, forwards

GB = 10 ** 9


# Host-to-device bandwidth defaults (bytes per second): what a PCIe 4.0 x16 link sustains from pinned memory, and
# about half of it from pageable memory (the driver copies through a pinned staging buffer).
PINNED_BANDWIDTH = 24 * GB


PAGEABLE_BANDWIDTH = 12 * GB


@dataclass(frozen=True)
class Timing:
    """Seconds per steady-state call: `transfer` (every host-to-device copy at its bandwidth), `exposed` (the
    part that compute does not hide: the call takes compute plus exposed), `hidden` = transfer - exposed, and
    `compute` (the blocks' compute time given, 0 when none was)."""

    transfer: float
    exposed: float
    compute: float

    @property
    def hidden(self) -> float:
        return self.transfer - self.exposed

    def to_json(self) -> dict:
        return {"transfer_s": self.transfer, "exposed_s": self.exposed, "hidden_s": self.hidden,
                "compute_s": self.compute}


def timing(schedule: BlockSchedule, *, pinned: frozenset[tuple[str, str]] = frozenset(),
           pinned_bandwidth: float = PINNED_BANDWIDTH, pageable_bandwidth: float = PAGEABLE_BANDWIDTH,
           block_seconds: float = 0.0) -> Timing:
    """The time model of one steady call, forward by forward, with one copy engine: a held block not on the
    device is copied before its forward computes; a streamed block is copied before it runs: with prefetch its
    copy may start once the streamed block two before it has finished (two slots: one computing, one arriving),
    without prefetch only when the compute reaches it. Each block but REST computes for `block_seconds`. `pinned` blocks
    copy at `pinned_bandwidth`, the others at `pageable_bandwidth` (bytes per second)."""
    model = schedule.model

    def seconds(key: tuple[str, str]) -> float:
        return model.size(key) / (pinned_bandwidth if key in pinned else pageable_bandwidth)

    on: set[tuple[str, str]] = set()
    result = Timing(0.0, 0.0, 0.0)
    for _ in range(2):  # the second call is the steady one
        transfer = compute = clock = 0.0
        for f in forwards(schedule):
            for key in ((f.component, b) for b in f.held if (f.component, b) not in on):
                on.add(key)
                transfer += seconds(key)
                clock += seconds(key)
            begun, engine, ends = clock, clock, []
            for b in f.blocks:
                if b == REST:  # the embeddings and the output layers: no block's compute time
                    continue
                if b in f.streamed:
                    key = (f.component, b)
                    ready = (ends[-2] if len(ends) >= 2 else begun) if model.prefetch else clock
                    engine = max(engine, ready) + seconds(key)
                    transfer += seconds(key)
                    clock = max(clock, engine) + block_seconds
                    ends.append(clock)
                else:
                    clock += block_seconds
                compute += block_seconds
            on.difference_update((f.component, b) for b in f.drop_after)
        result = Timing(transfer, clock - compute, compute)
    return result
