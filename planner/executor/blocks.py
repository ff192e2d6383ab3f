"""The budget policy at `granularity: block`, carried out: a component's blocks from its module tree, and the
residency that follows the decided block schedule forward by forward.

`planner.budget` decides (`decide.decide`: the schedule, `blocks.forwards`: what each forward of a call holds,
streams and drops); this module carries it out. A component's blocks come from its module tree: each tensor goes to
`planner.blocknames.block_of(its name)`, the naming of the safetensors reader, so the executor's blocks are the ones
`planner simulate --granularity block` reads from a folder (bytes as `modules.module_bytes` counts them, which also
sees the non-persistent buffers). A tensor reached under two blocks' names (tied weights), or a block that is not a
submodule, goes to REST, which is on the device for every forward of its component.

The residency follows the script by counting component forwards within the call (diffusers calls the component's
hook for `vae.decode` through `apply_forward_hook`, which has no post_forward, so a forward ends when the next one
starts or the call ends). When reality differs from the script, the budget still holds: a forward the script has no
place for (an unpredicted component, a component outside the plan, one more step than planned) holds its
component's REST and streams its blocks, making room by dropping blocks of other components first, least recently
used first; a forward the script has a place for first drops whatever the script would not have on the device
there. Every transfer the script did not plan is labelled. Exclusions stay on the device as whole components.

On a CUDA device, prefetch copies the next streamed block on a side stream from pinned memory (`StreamCopier`);
anywhere else (a dry run, a CPU) the same copy is made synchronously at the same point (`SyncCopier`), so the trace
is the same. Raises `PlanError` (PLN307) when a block cannot fit within the budget at all.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch

from planner.blocknames import REST, block_order, piece_of
from planner.budget import blocks, decide, problems
from planner.budget.blocks import BlockSchedule, Forward
from planner.executor.copiers import StreamCopier, SyncCopier, copier_for  # noqa: F401 (the names tests use)
from planner.executor.hooks import key_of
from planner.executor.reasons import (
    AFTER_OFFLOAD_ALL,
    MOVED,
    OFF_SCHEDULE,
    OUTSIDE,
    OWN_HOOK,
    PREFETCH_UNUSED,
    RAN_AGAIN,
    REPLANNED,
    SWAPPED,
    UNPLANNED_FORWARD,
    UNPREDICTED,
)
from planner.executor.weights import HOST, BlockWeights, RestWeights, Weights, check, evict, finish_call
from planner.plan import PlanError


@dataclass(frozen=True)
class Partition:
    """One component's tensors by block: `tensors` block -> its tensors (each tensor in exactly one block), in
    run order with REST last (always there); `modules` block -> its submodule (REST has none)."""

    tensors: Mapping[str, tuple[torch.Tensor, ...]]
    modules: Mapping[str, torch.nn.Module]

    def __post_init__(self):
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))
        object.__setattr__(self, "modules", MappingProxyType(dict(self.modules)))

    @property
    def sizes(self) -> dict[str, int]:
        """Bytes per block; they sum to `components.module_bytes` of the component."""
        return {b: sum(t.numel() * t.element_size() for t in ts) for b, ts in self.tensors.items()}

    def same(self, other: "Partition") -> bool:
        """The same tensors in the same blocks, of the same sizes (nothing added, replaced or resized)."""
        return self.sizes == other.sizes and all(
            tuple(map(id, ts)) == tuple(map(id, other.tensors[b])) for b, ts in self.tensors.items())


def partition(module: torch.nn.Module, splits: frozenset[str] = frozenset()) -> Partition:
    """`module`'s parameters and buffers grouped by `block_of(name)`, each tensor once; with `splits`, by
    `piece_of(name, splits)` (the blocks in it split into the pieces below them). A tensor named in several
    blocks (tied), or in a block that is not a submodule of its own (a parameter list's item, a module shared
    under two names), belongs to REST; a block inside another block belongs to the outer one."""
    names: dict[int, set[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, tensor in itertools.chain(module.named_parameters(remove_duplicate=False),
                                        module.named_buffers(remove_duplicate=False)):
        names.setdefault(id(tensor), set()).add(piece_of(name, splits))
        tensors.setdefault(id(tensor), tensor)
    wanted = {b for found in names.values() for b in found if b != REST}
    modules = _block_modules(module, wanted)
    outer = {b: _outermost(b, modules) for b in wanted}
    groups: dict[str, list[torch.Tensor]] = {}
    for key, found in names.items():
        owners = {outer[b] if b != REST else REST for b in found}
        block = owners.pop() if len(owners) == 1 else REST
        groups.setdefault(block, []).append(tensors[key])
    order = sorted((b for b in groups if b != REST), key=block_order)  # the order planner.folder gives blocks
    return Partition({**{b: tuple(groups[b]) for b in order}, REST: tuple(groups.get(REST, ()))},
                     {b: modules[b] for b in order})


def _block_modules(module: torch.nn.Module, names: set[str]) -> dict[str, torch.nn.Module]:
    """The submodule of each block name, for those that are one, and only once (a submodule reached under two
    names would get two hooks' worth of bookkeeping for one forward)."""
    found = {}
    for name in names:
        try:
            sub = module.get_submodule(name)
        except AttributeError:  # a parameter list's item, or a name through a non-module attribute
            continue
        if isinstance(sub, torch.nn.Module) and sub is not module:
            found[name] = sub
    counts = Counter(id(sub) for sub in found.values())
    return {name: sub for name, sub in found.items() if counts[id(sub)] == 1}


def _outermost(block: str, modules: Mapping[str, torch.nn.Module]) -> str:
    """The outermost block containing `block` (itself when none does), or REST when it is no submodule."""
    if block not in modules:
        return REST
    parts = block.split(".")
    for depth in range(1, len(parts)):
        prefix = ".".join(parts[:depth])
        if prefix in modules:
            return prefix
    return block


@dataclass
class RunningForward:
    """The forward running now: its component, the script's `forward` it follows (None: one the script has no
    place for), the `reason` its off-script loads carry (None while it follows the script), the blocks dropped
    right after they run, those run so far, a prefetched block not run yet, and whether the blocks run in the
    order this forward ran in before (prefetch follows that order)."""

    component: str
    forward: Forward | None
    reason: str | None
    transient: set[str] = field(default_factory=set)
    ran: list[str] = field(default_factory=list)
    pending: str | None = None
    ordered: bool = False


def _states(script: tuple[Forward, ...], start: frozenset[str]) -> tuple[tuple[frozenset[str], ...], frozenset[str]]:
    """What the script has on the device before each forward of a call starting from `start`, and at its end."""
    on, found = set(start), []
    for f in script:
        found.append(frozenset(on))
        on.update(key_of(f.component, b) for b in f.held)
        on.difference_update(key_of(f.component, b) for b in f.drop_after)
    return tuple(found), frozenset(on)


class BlockResidency:
    """What is on one device, block by block, and what moves around each forward (see the module docstring).
    Holds the trace, the modules and the schedule, never the handle or the pipeline."""

    def __init__(self, trace, device: torch.device, decision: decide.Decision, asker: problems.Asker,
                 pinned: frozenset[str], copier):
        budget, plan = decision.budget, decision.plan
        self.trace, self.device, self.budget, self.plan, self.copier = trace, device, budget, plan, copier
        self.keep_host = plan.keep_host_copy
        self.fixed = frozenset(plan.exclude)
        self.planned = frozenset(plan.sequence) | frozenset(plan.call_order)
        self.prefetch = plan.prefetch
        self.asker = asker
        self.pinned_keys = pinned
        self.modules: dict[str, torch.nn.Module] = {}
        self.partitions: dict[str, Partition] = {}
        self.weights: dict[str, Weights] = {}
        self.sizes: dict[str, int] = {}  # trace key -> bytes: blocks as "component/block", exclusions by name
        self.solved_for = {name: dict(sizes) for name, sizes in decision.sizes.items()}
        self.splits = dict(decision.splits)  # the blocks the budget split into pieces (blocks inside blocks)
        self._script(decision.schedule)
        self.on: dict[str, None] = {}  # on the device now, least recently used first
        self.why: dict[str, str | None] = {}  # the reason each block on the device was loaded for
        self.events: dict[str, object] = {}  # prefetched blocks whose copy may still run
        self.clean: set[str] = set()  # on the device and unchanged but by the pipeline since this call's start
        self.ahead: tuple[int, str] | None = None  # (script index, block): prefetched for the next forward
        self.order: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}  # blocks as they last ran per forward
        self.open: RunningForward | None = None
        self.outside: set[str] = set()
        self.started: int | None = None
        self.cursor = 0
        self.seen: set[str] = set()
        self.states = self.first
        self.parked: set[str] = set()
        self.copied_back: dict[int, int] = {}
        self.pinned: list[torch.Tensor] = []
        self.warned = False

    def _script(self, schedule: BlockSchedule | None) -> None:
        self.schedule = schedule
        self.script = blocks.forwards(schedule) if schedule is not None else ()
        self.first, self.end = _states(self.script, frozenset())
        self.steady, _ = _states(self.script, self.end)

    # -- the components ----------------------------------------------------------------------------------------
    def sync(self, modules: dict) -> None:
        """Follow the pipeline's components: a swapped or removed one leaves the device, a changed one (tensors
        added, replaced or resized: a LoRA loaded) is re-partitioned and the schedule solved again; weights moved
        by someone else are forgotten."""
        for name in [n for n in self.modules if n not in modules or self.modules[n] is not modules[n]]:
            self._forget_component(name, SWAPPED)
        for name, module in modules.items():
            found = partition(module, self.splits.get(name, frozenset()))
            if name in self.partitions and self.partitions[name].same(found):
                continue
            if name in self.partitions:
                self._forget_component(name, REPLANNED)
            self._add_component(name, module, found)
        for key in [k for k in self.on if not self.weights[k].intact()]:
            if key in self.events:
                self.copier.wait(self.events.pop(key))
            self.weights[key].forget()
            del self.on[key]
            self.clean.discard(key)
            self.why.pop(key, None)
            self.trace.offload(key, MOVED)
        self.trace.sizes = self.sizes
        current = {name: self.partitions[name].sizes for name in self.modules}
        if current != self.solved_for:
            self.solved_for = current
            try:  # the core decides again; grown past the budget, every forward streams, as the script has none
                self._script(decide.decide(self.plan, current, self.budget, self.asker).schedule)
            except PlanError:
                self._script(None)

    def _add_component(self, name: str, module, found: Partition) -> None:
        self.modules[name], self.partitions[name] = module, found
        if name in self.fixed:
            whole = Weights(module)  # loaded once and kept: not pinned, which would hold page-locked RAM for nothing
            self._add(name, whole, sum(found.sizes.values()))
            return
        parts = []
        for block, sub in found.modules.items():
            key = key_of(name, block)
            own = {id(t) for t in found.tensors[block]}
            foreign = frozenset(id(t) for t in Weights(sub).tensors() if id(t) not in own)
            parts.append(BlockWeights(sub, foreign, key in self.pinned_keys))
            self._add(key, parts[-1], found.sizes[block])
        rest = key_of(name, REST)
        self._add(rest, RestWeights(module, parts, rest in self.pinned_keys), found.sizes[REST])

    def _add(self, key: str, weights: Weights, size: int) -> None:
        weights.home()
        self.weights[key], self.sizes[key] = weights, size

    def _forget_component(self, name: str, reason: str) -> None:
        keys = [k for k in self.weights if k == name or k.startswith(name + "/")]
        self._check([k for k in keys if k in self.on])
        for key in keys:
            if key in self.on:
                self._evict(key, reason, trusted=True)
        for key in keys:
            del self.weights[key], self.sizes[key]
        del self.modules[name], self.partitions[name]

    def settle(self, first: bool) -> None:
        """The exclusions on the device, in name order, but those `offload_all()` took off (back when they run)."""
        for name in sorted((self.fixed & self.modules.keys()) - self.parked):
            if name not in self.on:
                self._make_room(name, {name}, SWAPPED)
                self._load(name, None if first else SWAPPED)

    def pin(self) -> int:
        """Pin the chosen blocks' host copies now (where `prepare` said host copies are pinned); the bytes pinned."""
        pinned = 0
        for key in self.pinned_keys:
            for tensor in self.weights[key].tensors() if key in self.weights else ():
                if tensor.device == HOST and not tensor.is_pinned():
                    tensor.data = tensor.data.pin_memory()
                    self.pinned.append(tensor)
                    pinned += tensor.numel() * tensor.element_size()
        return pinned

    def unpin(self) -> None:
        """The pinned host copies back in pageable memory (what is on the host now; the page-locked buffers are
        freed once nothing holds them)."""
        for tensor in self.pinned:
            if tensor.device == HOST and tensor.is_pinned():
                tensor.data = tensor.data.clone()
        self.pinned = []

    # -- a component's forward starts -------------------------------------------------------------------------
    def use(self, name: str) -> None:
        """Before a forward of component `name` (its `BudgetHook`): the forward before it ends, then the script's
        next forward of `name` is followed, or this one is handled as the script did not plan it."""
        self.trace.begin(time.perf_counter())
        if self.started != self.trace.call:
            self._start_call()
        if name in self.fixed:
            if name not in self.on:  # taken off by offload_all()
                self.parked.discard(name)
                self._make_room(name, {name}, AFTER_OFFLOAD_ALL)
                self._load(name, AFTER_OFFLOAD_ALL)
            return
        j = self._match(name)
        self._drop_ahead(j)
        if j is not None:
            self._close()
            self._follow(j)
        elif self.open is not None and self.open.component == name:
            self._again(name)
        else:
            self._close()
            self._unplanned(name)
        self.seen.add(name)

    def _start_call(self) -> None:
        """A call starts from the script's steady state, or from its first call when no block is on the device
        (the first call, or after offload_all)."""
        self.started, self.cursor, self.seen, self.open = self.trace.call, 0, set(), None
        moved = any(key not in self.fixed for key in self.on)
        self.states = self.steady if moved else self.first
        self._check(list(self.on))  # what stayed on the device across the call boundary, in one synchronisation
        self.clean = set(self.on)

    def _match(self, name: str) -> int | None:
        """The script's next forward of `name`, passing over forwards of components this call ran already (the
        pipeline made fewer of them than planned); None when the next forward is of another component."""
        j = self.cursor
        while j < len(self.script) and self.script[j].component != name and self.script[j].component in self.seen:
            j += 1
        return j if j < len(self.script) and self.script[j].component == name else None

    def _follow(self, j: int) -> None:
        """Forward `j` of the script: what the script would not have on the device goes, then REST and the held
        blocks come (REST first), and the first streamed block is prefetched."""
        f, state = self.script[j], self.states[j]
        self.cursor = j + 1
        ahead, self.ahead = self.ahead, None
        self._realign(state | ({key_of(f.component, ahead[1])} if ahead is not None else set()))
        held = [key_of(f.component, b) for b in f.held]
        for key in held:
            if key not in self.on:
                reason = OFF_SCHEDULE if key in state else None
                self._make_room(key, set(held), reason or OFF_SCHEDULE)
                self._load(key, reason)
            self._touch(key)
        seen = self.order.get((f.component, f.blocks))
        self.open = RunningForward(f.component, f, None, set(f.streamed), ordered=seen is not None)
        if ahead is not None and key_of(f.component, ahead[1]) in self.on:
            self.open.pending = ahead[1]  # its first streamed block, copied during the forward before
        self._prefetch(self.open)

    def _again(self, name: str) -> None:
        """One more forward of the component that just ran, where the script has none: it keeps what its forward
        holds and streams the rest again."""
        if name in self.planned:
            self._warn(name)
        open = self.open
        open.reason = open.reason or UNPLANNED_FORWARD
        open.ran, open.ordered = [], False

    def _unplanned(self, name: str) -> None:
        """A forward the script has no place for: its REST held, its blocks streamed (those on the device stay)."""
        reason = UNPREDICTED if name in self.planned else OWN_HOOK
        if reason == UNPREDICTED:
            self._warn(name)
        key = key_of(name, REST)
        if key not in self.on:
            self._make_room(key, {key}, reason)
            self._load(key, reason)
        self._touch(key)
        self.open = RunningForward(name, None, reason)

    def _close(self) -> None:
        """The open forward is over: an unused prefetched block and its `drop_after` blocks leave the device, and
        the order its blocks ran in is kept for the next prefetch."""
        open, self.open = self.open, None
        if open is None:
            return
        if open.pending is not None and key_of(open.component, open.pending) in self.on:
            self._evict(key_of(open.component, open.pending), PREFETCH_UNUSED)
        f = open.forward
        if f is None:
            return
        for b in f.drop_after:
            key = key_of(f.component, b)
            if key in self.on:
                self._evict(key, self.why.get(key))
        if open.reason is None:
            self.order[(f.component, f.blocks)] = tuple(open.ran)

    def _realign(self, state: frozenset[str]) -> None:
        """Drop what the script does not have on the device here (nothing, while reality follows it)."""
        for key in [k for k in self.on if k not in state and k not in self.fixed]:
            self._evict(key, self.why.get(key) or OFF_SCHEDULE)

    # -- a block runs ------------------------------------------------------------------------------------------
    def enter(self, component: str, block: str) -> None:
        """Before `block` of `component` runs: on the device (waiting for its prefetch, or loaded now), then the
        next streamed block prefetched."""
        key = key_of(component, block)
        open = self.open
        if open is None or open.component != component:
            if key not in self.on:
                self._make_room(key, {key}, OUTSIDE)
                self._load(key, OUTSIDE)
                self.outside.add(key)
            return
        if key in self.events:
            self.copier.wait(self.events.pop(key))
        if open.pending == block:
            open.pending = None
        if key not in self.on:
            f = open.forward
            reason = open.reason or (RAN_AGAIN if block in open.ran else
                                     None if f is not None and block in f.streamed else OFF_SCHEDULE)
            protect = {key, key_of(component, REST), *(key_of(component, b) for b in (f.held if f else ()))}
            self._make_room(key, protect, reason or OFF_SCHEDULE)
            self._load(key, reason)
            if f is None or block not in f.held:
                open.transient.add(block)
        self._touch(key)
        open.ran.append(block)
        seen = self.order.get((component, open.forward.blocks)) if open.forward is not None else None
        if open.ordered and (seen is None or len(seen) < len(open.ran) or seen[len(open.ran) - 1] != block):
            open.ordered = False  # the blocks run otherwise than before: no guessing which comes next
        self._prefetch(open)

    def leave(self, component: str, block: str) -> None:
        """After `block` ran: dropped when it streams through its forward."""
        key = key_of(component, block)
        if key in self.outside:
            self.outside.discard(key)
            if key in self.on:
                self._evict(key, OUTSIDE)
            return
        open = self.open
        if open is not None and open.component == component and block in open.transient and key in self.on:
            self._evict(key, self.why.get(key))

    def _prefetch(self, open: RunningForward) -> None:
        """Start copying the next streamed block of a forward that follows the script, in the order its blocks ran
        last time, when one slot is free and the budget has room for it (it always has, by the schedule's bound:
        two streamed blocks in flight)."""
        f = open.forward
        if not self.prefetch or f is None or open.reason is not None or open.pending is not None or not open.ordered:
            return
        seen = self.order[(f.component, f.blocks)]
        ahead = next((b for b in seen[len(open.ran):] if b in f.streamed), None)
        if ahead is None:
            self._prefetch_next()
            return
        key = key_of(f.component, ahead)
        if key in self.on or self.device_bytes() + self.sizes[key] > self.budget:
            return
        self._load(key, None, ahead=True)
        open.pending = ahead

    def _prefetch_next(self) -> None:
        """The running forward has no streamed block left to prefetch: start copying the next forward's first
        streamed block (of whatever component: the next step's, the vae's after the last step), in the order its
        blocks ran last time, when the budget has room for it both now and once the next forward holds what the
        script has it hold (and never above the schedule's peak, which the simulation reports)."""
        n = self.cursor
        if self.ahead is not None or n >= len(self.script) or self.schedule is None:
            return
        nf = self.script[n]
        seen = self.order.get((nf.component, nf.blocks))
        first = next((b for b in seen or () if b in nf.streamed), None)
        if first is None:
            return
        key = key_of(nf.component, first)
        then = self.states[n] | {key_of(nf.component, b) for b in nf.held} | (self.fixed & self.on.keys())
        need = max(self.device_bytes(), sum(self.sizes.get(k, 0) for k in then)) + self.sizes[key]
        if key in self.on or need > min(self.budget, self.schedule.peak_bytes):
            return
        self._load(key, None, ahead=True)
        self.ahead = (n, first)

    def _drop_ahead(self, j: int | None) -> None:
        """A block prefetched for a forward that is not the one starting (`j`) leaves the device unused."""
        if self.ahead is not None and self.ahead[0] != j:
            key = key_of(self.script[self.ahead[0]].component, self.ahead[1])
            self.ahead = None
            if key in self.on:
                self._evict(key, PREFETCH_UNUSED)

    # -- moving ----------------------------------------------------------------------------------------------------
    def device_bytes(self) -> int:
        return sum(self.sizes[key] for key in self.on)

    def _touch(self, key: str) -> None:
        self.on[key] = self.on.pop(key)

    def _make_room(self, key: str, protect: set[str], reason: str) -> None:
        """Drop what does not fit beside `key`: blocks of other components first, then of the running one, least
        recently used first; exclusions and `protect` never. Raises PlanError (PLN307) when it cannot fit."""
        size = self.sizes[key]
        excess = self.device_bytes() + size - self.budget
        if excess <= 0:
            return
        running = self.open.component if self.open is not None else None
        victims = sorted((k for k in self.on if k not in protect and k not in self.fixed),
                         key=lambda k: k.split("/", 1)[0] == running)
        for victim in victims:
            if excess <= 0:
                break
            excess -= self.sizes[victim]
            self._evict(victim, reason)
        if excess > 0:
            raise PlanError([problems.cannot_fit(self.asker, self.budget, repr(key), size)])

    def _load(self, key: str, reason: str | None, ahead: bool = False) -> None:
        weights = self.weights[key]
        if ahead:
            self.events[key] = self.copier.copy(lambda: self._copy(weights))
        else:
            weights.load(self.device, self.keep_host)
        self.on[key] = None
        if self.started is not None:  # loaded within the call: only the pipeline can change it before it ends
            self.clean.add(key)
        self.why[key] = reason
        self.trace.load(key, reason)

    def _copy(self, weights: Weights) -> list[torch.Tensor]:
        weights.load(self.device, self.keep_host)
        return [entry.tensor.data for entry in weights.kept]

    def _check(self, keys: list[str]) -> None:
        """The checksums of `keys`' device copies compared in one synchronisation (changed ones are copied back when
        they leave): for what something outside the pipeline can have changed since it was loaded or checked."""
        for key in keys:
            if key in self.events:
                self.copier.wait(self.events.pop(key))
        check([self.weights[key] for key in keys if key not in self.clean])

    def _evict(self, key: str, reason: str | None, trusted: bool | None = None) -> None:
        """`key` off the device: without a checksum comparison where it is `clean` (or `trusted`: just checked)."""
        if key in self.events:  # a copy still running on the side stream must finish before its memory goes
            self.copier.wait(self.events.pop(key))
        del self.on[key]
        self.why.pop(key, None)
        trusted = key in self.clean if trusted is None else trusted
        self.clean.discard(key)
        evict(self.weights[key], self.device, self.trace, key, reason, self.copied_back, trusted)

    def _warn(self, name: str) -> None:
        if not self.warned:
            self.warned = True
            order = " -> ".join(f.component for f in self.script) or "none fits"
            warnings.warn(f"offload-planner: {name!r} ran a forward the block schedule did not plan (its forwards: "
                          f"{order}); it ran within the budget and the trace marks its transfers. Write the order "
                          "the pipeline uses its components as `uses`, and its denoising steps as `steps`.",
                          RuntimeWarning, stacklevel=4)

    # -- the call ends ---------------------------------------------------------------------------------------------
    def end_call(self, now: float) -> None:
        """The call is over: the open forward ends, what the script does not keep into the next call leaves the
        device, and the trace closes the call."""
        self._close()
        self._drop_ahead(None)
        for key in [k for k in self.outside if k in self.on]:
            self._evict(key, OUTSIDE)
        self.outside.clear()
        self._realign(self.end)
        self.started = None
        self.clean = set()  # between calls anyone can change what stays: the next call's start checks it
        finish_call(self.trace, self.copied_back, now)

    def offload_all(self, reason: str | None) -> None:
        """Everything off the device (the exclusions too), in the trace's order; the next call starts as the
        script's first call does."""
        self.open = None
        self.ahead = None
        self.outside.clear()
        self.parked |= self.fixed & self.on.keys()
        leaving = [k for k in self.sizes if k in self.on]
        self._check(leaving)
        for key in leaving:
            self._evict(key, reason, trusted=True)

    def release(self) -> None:
        """Before the modules are given back: every block off the device, the pinned host copies back in pageable
        memory (those a later load pinned too: a block re-partitioned)."""
        self.offload_all(None)
        self.unpin()
        for weights in self.weights.values():
            weights.unpin()
