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
    rank = {name: i for i, name in enumerate(names)}
    return tuple(nx.lexicographical_topological_sort(graph(names, edges), key=rank.__getitem__))


def resolve(names: Sequence[str], edges: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...] | None, list]:
    """(the order, []) for a DAG, or (None, its cycles) when it has any: one graph walk in the common case."""
    try:
        return order(names, edges), []
    except nx.NetworkXUnfeasible:
        return None, cycles(names, edges)


def cycles(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[tuple[str, ...]]:
    """One cycle per strongly connected group of components, as a closed path in running order
    (`("unet", "vae", "unet")`), starting at the group's first declared name; self-loops are not included."""
    rank = {name: i for i, name in enumerate(names)}
    g = graph(names, edges)
    found = []
    for group in nx.strongly_connected_components(g):
        if len(group) < 2:
            continue
        start = min(group, key=rank.__getitem__)
        sub = g.subgraph(group)
        back = min((nx.shortest_path(sub, nxt, start) for nxt in sub.successors(start)),
                   key=lambda p: (len(p), [rank[n] for n in p]))
        found.append((start, *back))
    return sorted(found, key=lambda p: rank[p[0]])
