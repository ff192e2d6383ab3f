import subprocess
import sys

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import order


def test_ties_follow_declaration_order():
    assert order.order(["b", "a", "c"], [("b", "c"), ("a", "c")]) == ("b", "a", "c")


def test_reverse_declared_dag_resolves_in_dependency_order():
    names = ["vae", "unet", "text_encoder_2", "text_encoder"]
    edges = [("unet", "vae"), ("text_encoder", "unet"), ("text_encoder_2", "unet")]
    assert order.order(names, edges) == ("text_encoder_2", "text_encoder", "unet", "vae")


def test_order_is_deterministic():
    names = [f"c{i}" for i in range(30)]
    edges = [(names[i], names[j]) for i in range(30) for j in range(i + 1, 30) if (i * j) % 7 == 1]
    assert len({order.order(names, edges) for _ in range(20)}) == 1


def test_cycle_is_reported_with_its_path():
    assert order.cycles(["unet", "vae"], [("unet", "vae"), ("vae", "unet")]) == [("unet", "vae", "unet")]


def test_cycle_path_starts_at_first_declared_and_closes():
    names = ["x", "a", "b", "c"]
    edges = [("x", "a"), ("a", "b"), ("b", "c"), ("c", "a")]
    assert order.cycles(names, edges) == [("a", "b", "c", "a")]


def test_two_separate_cycles_are_both_reported():
    edges = [("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")]
    assert order.cycles(["a", "b", "c", "d"], edges) == [("a", "b", "a"), ("c", "d", "c")]


def test_order_refuses_a_cycle():
    with pytest.raises(nx.NetworkXUnfeasible):
        order.order(["a", "b"], [("a", "b"), ("b", "a")])


def test_the_shortest_cycle_is_reported_ties_by_declaration_order():
    # a -> b -> a and a -> c -> a are both shortest; b is declared first
    names = ["a", "c", "b"]
    edges = [("a", "c"), ("c", "a"), ("a", "b"), ("b", "a"), ("c", "b")]
    assert order.cycles(["a", "b", "c"], edges) == [("a", "b", "a")]
    assert order.cycles(names, edges) == [("a", "c", "a")]


@pytest.fixture
def graph_steps(monkeypatch):
    """Counts the graph work networkx does from now on, whoever asks for it (our walks or networkx's own
    algorithms, through any view): each adjacency row fetched, each neighbour and each node iterated over. Every
    DiGraph built during the test stores its adjacency and nodes in the counting dicts below."""
    steps = [0]

    class Rows(dict):
        def __getitem__(self, node):
            steps[0] += 1
            return super().__getitem__(node)

    class Walked(dict):
        def __iter__(self):
            for key in super().__iter__():
                steps[0] += 1
                yield key

    monkeypatch.setattr(nx.DiGraph, "adjlist_outer_dict_factory", Rows)
    monkeypatch.setattr(nx.DiGraph, "adjlist_inner_dict_factory", Walked)
    monkeypatch.setattr(nx.DiGraph, "node_dict_factory", Walked)
    return steps


def test_cycles_cost_stays_linear_for_thousands_of_components(graph_steps):
    """A ring through 5,000 components with 2,500 ways out of its start: finding its shortest cycle touches the
    graph a bounded number of times per node and edge (about 6 today), where one search per way out (the
    quadratic walk this replaced) touches it millions of times."""
    n = 5000
    names = [f"c{i}" for i in range(n)]
    edges = [(names[i], names[(i + 1) % n]) for i in range(n)]  # one ring through everything
    edges += [(names[0], names[i]) for i in range(2, n, 2)]  # and many ways out of the start
    (cycle,) = order.cycles(names, edges)
    assert cycle == ("c0", "c4998", "c4999", "c0")  # the shortest way back to the first declared
    assert 0 < graph_steps[0] <= 12 * (len(names) + len(edges)), graph_steps[0]


def test_resolve_gives_the_order_or_the_cycles():
    assert order.resolve(["a", "b"], [("a", "b")]) == (("a", "b"), [])
    assert order.resolve(["a", "b"], [("a", "b"), ("b", "a")]) == (None, [("a", "b", "a")])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.permutations(range(n)), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n))))
def test_the_order_is_networkxs_lexicographical_topological_sort(case):
    """Our heap walk and networkx agree on every graph: the same order for a DAG, a cycle found for the others."""
    declared, pairs = case
    names = [f"c{i}" for i in declared]
    edges = [(f"c{a}", f"c{b}") for a, b in pairs if a != b]
    rank = {name: i for i, name in enumerate(names)}
    try:
        expected = tuple(nx.lexicographical_topological_sort(order.graph(names, edges), key=rank.__getitem__))
    except nx.NetworkXUnfeasible:
        expected = None
    assert order.resolve(names, edges)[0] == expected
    assert (order.resolve(names, edges)[1] == []) == (expected is not None)


def test_ordering_imports_no_networkx():
    code = "import sys; from planner import order; order.order(['a', 'b'], [('a', 'b')]); " \
        "print('networkx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
