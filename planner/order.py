"""The component DAG and its one deterministic order (networkx), and cycles reported by their path."""

from __future__ import annotations

from typing import Iterable, Sequence

import networkx as nx


def graph(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> nx.DiGraph:
    """A DAG over `names`; an edge (a, b) means b runs after a."""
    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(edges)
    return g


def order(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """`names` in dependency order, ties broken by their place in `names` (declaration order in the file).

    A plan written in diffusers' order therefore reproduces `model_cpu_offload_seq` exactly. Raises
    `networkx.NetworkXUnfeasible` when the edges hold a cycle (see `cycles` for its path).
    """
    return _order(graph(names, edges), _ranks(names))


def resolve(names: Sequence[str], edges: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...] | None, list]:
    """(the order, []) for a DAG, or (None, its cycles) when it has any: one graph, one walk in the common case."""
    g, rank = graph(names, edges), _ranks(names)
    try:
        return _order(g, rank), []
    except nx.NetworkXUnfeasible:
        return None, _cycles(g, rank)


def cycles(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[tuple[str, ...]]:
    """One cycle per strongly connected group of components, as a closed path in running order
    (`("unet", "vae", "unet")`), starting at the group's first declared name: the shortest such path, ties
    broken by declaration order at each step. Self-loops are not included. Linear in the size of the graph."""
    return _cycles(graph(names, edges), _ranks(names))


def _ranks(names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def _order(g: nx.DiGraph, rank: dict[str, int]) -> tuple[str, ...]:
    return tuple(nx.lexicographical_topological_sort(g, key=rank.__getitem__))


def _cycles(g: nx.DiGraph, rank: dict[str, int]) -> list[tuple[str, ...]]:
    found = []
    for group in nx.strongly_connected_components(g):
        if len(group) < 2:
            continue
        start = min(group, key=rank.__getitem__)
        found.append(_shortest_cycle(g.subgraph(group), start, rank))
    return sorted(found, key=lambda p: rank[p[0]])


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
