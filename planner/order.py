"""The component DAG and its one deterministic order, and cycles reported by their path.

Ordering a plan's few components is a heap walk done here (it runs for every plan, and must cost less than
reading it); networkx, imported only when a plan has a cycle (or for `graph`), finds the cycles.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import networkx as nx


def graph(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> nx.DiGraph:
    """A networkx DAG over `names`; an edge (a, b) means b runs after a."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(edges)
    return g


def order(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """`names` in dependency order, ties broken by their place in `names` (declaration order in the file): of the
    components whose predecessors have all run, the first declared runs next (networkx's
    `lexicographical_topological_sort` keyed by declaration order; a test keeps both equal).

    A plan written in diffusers' order therefore reproduces `model_cpu_offload_seq` exactly. Every edge joins two
    of `names`. Raises `networkx.NetworkXUnfeasible` when the edges hold a cycle (see `cycles` for its path).
    """
    found = _order(names, edges)
    if found is None:
        import networkx as nx

        raise nx.NetworkXUnfeasible("the graph has a cycle: no order exists")
    return found


def resolve(names: Sequence[str], edges: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...] | None, list]:
    """(the order, []) for a DAG, or (None, its cycles) when it has any: one walk in the common case."""
    found = _order(names, edges)
    return (found, []) if found is not None else (None, cycles(names, edges))


def cycles(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[tuple[str, ...]]:
    """One cycle per strongly connected group of components, as a closed path in running order
    (`("unet", "vae", "unet")`), starting at the group's first declared name: the shortest such path, ties
    broken by declaration order at each step. Self-loops are not included. Linear in the size of the graph."""
    import networkx as nx

    g, rank = graph(names, edges), _ranks(names)
    found = []
    for group in nx.strongly_connected_components(g):
        if len(group) < 2:
            continue
        start = min(group, key=rank.__getitem__)
        found.append(_shortest_cycle(g.subgraph(group), start, rank))
    return sorted(found, key=lambda p: rank[p[0]])


def _ranks(names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def _order(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> tuple[str, ...] | None:
    """Kahn's walk with a heap of declaration ranks; None when a cycle leaves components unordered. When every
    edge points forward in declaration order (a list, a DAG written in running order: most plans), the walk would
    take the names as declared, so they are the order."""
    rank = _ranks(names)
    edges = list(edges)
    if len(rank) == len(names) and all(rank[before] < rank[name] for before, name in edges):
        return tuple(names)
    named = {i: name for name, i in rank.items()}
    after: dict[str, set[str]] = {name: set() for name in rank}
    waiting = dict.fromkeys(rank, 0)
    for before, name in edges:
        if name not in after[before]:
            after[before].add(name)
            waiting[name] += 1
    ready = [rank[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    found = []
    while ready:
        name = named[heapq.heappop(ready)]
        found.append(name)
        for successor in after[name]:
            waiting[successor] -= 1
            if waiting[successor] == 0:
                heapq.heappush(ready, rank[successor])
    return tuple(found) if len(found) == len(rank) else None


def _shortest_cycle(group: nx.DiGraph, start: str, rank: dict[str, int]) -> tuple[str, ...]:
    """The shortest closed path from `start` back to it inside the strongly connected `group`."""
    to_start = {start: 0}  # steps from each component to `start`: one breadth-first walk against the edges
    frontier = [start]
    while frontier:
        ahead = []
        for node in frontier:
            for before in group.predecessors(node):
                if before not in to_start:
                    to_start[before] = to_start[node] + 1
                    ahead.append(before)
        frontier = ahead
    path = [start]
    node = min((n for n in group.successors(start) if n != start), key=lambda n: (to_start[n], rank[n]))
    while node != start:
        path.append(node)
        node = min((n for n in group.successors(node) if to_start[n] == to_start[node] - 1), key=rank.__getitem__)
    return (*path, start)
