"""Blocks inside blocks: which blocks of a component to split into the pieces below them for a budget.

Pure. A component's first repeated level (`planner.blocknames.block_of`) can be very uneven: SDXL's `up_blocks.0`
alone is 2.25 GB in fp16, and no block schedule runs in less than what one pass needs with its largest block in
flight. A split block is replaced by its own repeated submodules and its other submodules
(`planner.blocknames.piece_of`), its own tensors joining the component's REST; split again, down to leaf modules
where needed. `choose` splits no finer than the budget needs (fewer hooks, fewer transfers): starting from no split,
while the least budget (`planner.budget.decide.least_blocks` on the pieces) is above the budget, the largest piece
of the component that needs most is split, until the least fits or no piece of that component can be split (a leaf
module, or a piece whose tensors are all tied elsewhere). Where today's blocks fit, nothing is split, so the schedule
is today's.

The pieces come from `blocks_for(component, splits)` ({piece: bytes} in run order, REST last): the folder's
`ComponentSizes.blocks(dtype, splits)` from the headers, the executor's `partition(module, splits).sizes` from the
module tree (tied tensors in REST), so both sides choose the same split for the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from planner.blocknames import REST, block_order, piece_of

Pieces = Callable[[str, frozenset], Mapping[str, int]]  # (component, its split pieces) -> {piece: bytes}

Least = Callable[[Mapping[str, Mapping[str, int]]], tuple[int, str | None]]  # pieces -> (least budget, component)


@dataclass(frozen=True)
class Nesting:
    """The split chosen: `splits` per component (the pieces split, empty: today's blocks), `blocks` the pieces'
    bytes ({component: {piece: bytes}}), `needed` the least budget on them; when it is above the budget, `bound`
    names the (component, piece) that cannot be split further and bounds it (None when REST does)."""

    splits: Mapping[str, frozenset[str]]
    blocks: Mapping[str, Mapping[str, int]]
    needed: int = 0
    bound: tuple[str, str] | None = None
    component: str | None = None
    dead: frozenset = field(default=frozenset())

    def __post_init__(self):
        object.__setattr__(self, "splits", MappingProxyType({c: frozenset(s) for c, s in self.splits.items()}))
        object.__setattr__(self, "blocks", MappingProxyType({c: MappingProxyType(dict(b))
                                                             for c, b in self.blocks.items()}))

    @property
    def nested(self) -> bool:
        return any(self.splits.values())

    def depth(self, component: str) -> int:
        """How many levels deep `component`'s pieces go: 1 for today's blocks, one more per split level."""
        splits = self.splits.get(component, frozenset())
        return 1 + max((sum(1 for s in splits if piece.startswith(s + ".")) for piece in self.blocks[component]),
                       default=0)

    def describe(self) -> list[str]:
        """One line per split component: "unet split at up_blocks.0, up_blocks.0.attentions.0 (depth 3, 40
        pieces)"."""
        found = []
        for name, splits in self.splits.items():
            if splits:
                pieces = sum(1 for b in self.blocks[name] if b != REST)
                found.append(f"{name} split at {', '.join(sorted(splits, key=block_order))} "
                             f"(depth {self.depth(name)}, {pieces} pieces)")
        return found

    def to_json(self) -> dict:
        return {name: {"splits": sorted(splits, key=block_order), "depth": self.depth(name),
                       "pieces": sum(1 for b in self.blocks[name] if b != REST)}
                for name, splits in self.splits.items() if splits}


def choose(blocks_for: Pieces, components: Iterable[str], least: Least, budget: int) -> Nesting:
    """The fewest splits that bring `least` (the least budget on the pieces, and the component that needs it) within
    `budget` (see the module docstring); where none does, every piece of the bounding component that can be split
    is, and `bound` names its largest piece, which cannot."""
    splits = {name: frozenset() for name in components}
    found = {name: dict(blocks_for(name, frozenset())) for name in splits}
    dead: set[tuple[str, str]] = set()
    while True:
        needed, component = least(found)
        if needed <= budget or component not in found:
            return Nesting(splits, found, needed, None, component, frozenset(dead))
        sizes = found[component]
        for piece in sorted((b for b in sizes if b != REST and (component, b) not in dead),
                            key=lambda b: (-sizes[b], block_order(b))):
            trial = splits[component] | {piece}
            pieces = dict(blocks_for(component, trial))
            if any(b.startswith(piece + ".") for b in pieces):
                splits[component], found[component] = trial, pieces
                break
            dead.add((component, piece))
        else:
            largest = max((b for b in sizes if b != REST), key=lambda b: (sizes[b], b), default=None)
            return Nesting(splits, found, needed, None if largest is None else (component, largest), component,
                           frozenset(dead))


def from_tensors(tensors: Mapping[str, Mapping[str, int]]) -> Pieces:
    """`blocks_for` over per-tensor bytes ({component: {tensor name: bytes}}): each tensor in its `piece_of`, pieces
    in natural name order, REST last (as `planner.folder.sizes.ComponentSizes.blocks` groups them)."""
    def blocks_for(component: str, splits: frozenset) -> dict[str, int]:
        totals: dict[str, int] = {}
        for name, size in tensors[component].items():
            piece = piece_of(name, splits)
            totals[piece] = totals.get(piece, 0) + size
        rest = totals.pop(REST, 0)
        return {**{b: totals[b] for b in sorted(totals, key=block_order)}, REST: rest}

    return blocks_for


Cost = Callable[[Mapping[str, Mapping[str, int]]], float | None]  # pieces -> bytes per call (None: no schedule)


def refine(blocks_for: Pieces, chosen: Nesting, largest: int, cost: Cost | None = None) -> Nesting:
    """Finer where it pays: the split components' pieces above `largest` bytes (the room a piece in flight may
    take: a share of the budget) split further, the largest first and all of one size at once (identical blocks
    split alike), as far as they split. The room kept for pieces in flight is room no piece can be held in, so
    smaller pieces let the schedule hold more; the rest of the component is left as it is (fewer hooks). With
    `cost` (the exact optimum's bytes per call), the finer split is kept only where it moves fewer bytes. Only a
    split that `choose` needed is refined, so where today's blocks fit nothing changes."""
    splits = dict(chosen.splits)
    found = {name: dict(b) for name, b in chosen.blocks.items()}
    dead = set(chosen.dead)
    for name in [n for n, s in chosen.splits.items() if s]:
        while True:
            sizes = found[name]
            open_ = [b for b in sizes if b != REST and (name, b) not in dead and sizes[b] > largest]
            if not open_:
                break
            top = max(sizes[b] for b in open_)
            for piece in [b for b in open_ if sizes[b] == top]:
                trial = splits[name] | {piece}
                pieces = dict(blocks_for(name, trial))
                if any(b.startswith(piece + ".") for b in pieces):
                    splits[name], found[name] = trial, pieces
                else:
                    dead.add((name, piece))
    finer = Nesting(splits, found, chosen.needed, None, chosen.component, frozenset(dead))
    if cost is not None and finer.splits != chosen.splits:
        before, after = cost(chosen.blocks), cost(finer.blocks)
        if after is None or (before is not None and after >= before):
            return chosen
    return finer
