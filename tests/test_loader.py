import os
import re
import tempfile
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import planner
from planner import loader, rules, validate
from planner.plan import Problem


def test_values_and_keys_carry_their_positions():
    doc = loader.load(b"version: 1\ncomponents:\n  unet: {after: [vae]}\n", "p.yaml")
    assert doc.problems == []
    assert doc.data == {"version": 1, "components": {"unet": {"after": ["vae"]}}}
    assert doc.key_marks[("components", "unet")] == (3, 3)
    assert doc.marks[("components", "unet", "after", 0)] == (3, 18)


def test_yaml11_boolean_is_a_problem_that_states_both_readings():
    doc = loader.load(b"gpu_id: yes\n", "p.yaml")
    assert [(p.rule, p.line, p.column) for p in doc.problems] == [("PLN010", 1, 9)]
    assert "the boolean true in YAML 1.1" in doc.problems[0].message
    assert "the string 'yes' in YAML 1.2" in doc.problems[0].message
    assert doc.data == {"gpu_id": None} and doc.is_refused(("gpu_id",))  # no reading is chosen in silence
    assert doc.raw_scalars[("gpu_id",)] == "yes"


def test_python_tags_are_never_constructed(tmp_path):
    marker = tmp_path / "pwned"
    raw = f'x: !!python/object/apply:os.system ["touch {marker}"]\n'.encode()
    doc = loader.load(raw, "p.yaml")
    assert [p.rule for p in doc.problems] == ["PLN008"]
    assert not marker.exists()


def test_billion_laughs_is_refused_within_the_node_budget(monkeypatch):
    """Ten levels of nine aliases (9**10 nodes expanded) are refused, and building the document visits at most
    2 * MAX_NODES nodes on the way (each node the budget pays for, and the alias that led to it): the counter
    stops a loader that expands aliases past its budget at once."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghi", "bcdefghij", strict=False):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    built, node = [0], loader._Builder.node

    def counted(self, event, path):
        built[0] += 1
        assert built[0] <= 2 * loader.MAX_NODES, "the loader expands aliases past its node budget"
        return node(self, event, path)

    monkeypatch.setattr(loader._Builder, "node", counted)
    doc = loader.load("\n".join(lines).encode(), "p.yaml")
    assert [p.rule for p in doc.problems] == ["PLN007"] and doc.data is None
    assert 0 < built[0] <= 2 * loader.MAX_NODES


def test_deep_nesting_is_refused_not_crashed():
    doc = loader.load(b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "p.yaml")
    assert [p.rule for p in doc.problems] == ["PLN007"]


def test_bom_is_accepted():
    assert loader.load("\ufeffversion: 1\n".encode(), "p.yaml").data == {"version": 1}


def _only_problems(doc, problems=None, text=None):
    """Every problem is a `Problem` with a known rule, placed on a line of the file."""
    lines = len(re.split("\r\n|[\n\r\x85\u2028\u2029]", doc.text if text is None else text))
    for p in doc.problems if problems is None else problems:
        assert isinstance(p, Problem) and p.rule in rules.RULES, p
        assert 1 <= p.line <= max(lines, 1) and p.column >= 1, p


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_only_problems(raw):
    _only_problems(loader.load(raw, "fuzz.yaml"), text=raw.decode("utf-8", "replace"))


_yamlish = st.lists(st.sampled_from(
    ["version", "device", "components", "after", ":", " ", "  ", "\n", "\t", "-", "[", "]", "{", "}", ",", "&a",
     "*a", "!!python/object:x", "!!set", "<<", "---", "...", "'", '"', "#", "yes", "1", "cuda", "unet", "?", "|",
     ">", "%YAML 1.1", "\x00", "\ufeff", "é", "0x1f", "~", "null", ".inf"]), max_size=60).map("".join)


@settings(max_examples=500, deadline=None)
@given(_yamlish)
def test_random_yaml_like_text_gives_only_problems(text):
    doc = loader.load(text.encode("utf-8"), "fuzz.yaml")
    _only_problems(doc)
    _only_problems(doc, validate.check_document(doc)[1])


# -- YAML standard tags -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["!!int abc", "!!int ''", "!!int 1e3", "!!float x", "!!float ''", "!!bool maybe",
                                   "!!bool ''", "!!null x", "!!timestamp nope", "!!int [1]", "!!float {a: 1}",
                                   "!!str [a]", "!!seq x", "!!map x", "!!binary aGk=", "!!set {a: null}",
                                   "!!omap [a: 1]", "!!pairs [a: 1]", "!foo x", "!!python/tuple [1]"])
def test_a_tag_that_cannot_hold_its_value_is_one_located_problem(value):
    doc = loader.load(f"version: 1\ngpu_id: {value}\n".encode(), "p.yaml")
    assert [(p.rule, p.line, p.column) for p in doc.problems] == [("PLN008", 2, 9)]
    assert doc.data["gpu_id"] is None and doc.is_refused(("gpu_id",))
    _, problems = validate.check_document(doc)
    assert [p.rule for p in problems if p.line == 2] == ["PLN008"]  # no second problem about the refused value


@pytest.mark.parametrize("value, expected", [("!!int 1", 1), ("!!int 0x10", 16), ("!!float 1", 1.0),
                                             ("!!float .inf", float("inf")), ("!!bool true", True),
                                             ("!!null ''", None), ("!!str 010", "010"), ("!!str yes", "yes"),
                                             ("! 010", "010"), ("'on'", "on"), ('"1:30"', "1:30"),
                                             ("!!timestamp 2001-12-14", "2001-12-14")])
def test_a_tag_holding_a_value_it_can_hold_gives_that_value(value, expected):
    doc = loader.load(f"x: {value}\n".encode(), "p.yaml")
    assert doc.problems == [] and doc.data == {"x": expected}


def test_a_tagged_number_read_differently_by_yaml_1_1_and_1_2_is_a_problem():
    doc = loader.load(b"a: !!int 010\nb: !!bool yes\n", "p.yaml")
    assert [(p.rule, p.line) for p in doc.problems] == [("PLN010", 1), ("PLN010", 2)]
    assert "the integer 8 in YAML 1.1 but the integer 10 in YAML 1.2" in doc.problems[0].message


def test_tags_on_keys_and_complex_keys_are_problems():
    doc = loader.load(b"!!python/name:os.system a: 1\n!!int 1: 2\n? [a]\n: 3\n? {b: 1}\n: 4\nok: 5\n", "p.yaml")
    assert [(p.rule, p.line) for p in doc.problems] == [("PLN008", 1), ("PLN008", 2), ("PLN009", 3), ("PLN009", 5)]
    assert doc.data == {"ok": 5}


# -- YAML 1.1 versus YAML 1.2 -------------------------------------------------------------------------------------

AMBIGUOUS = {  # plain scalar -> words of its YAML 1.1 reading, words of its YAML 1.2 reading
    "010": ("the integer 8", "the integer 10"), "-010": ("the integer -8", "the integer -10"),
    "0o10": ("the string '0o10'", "the integer 8"), "08": ("the string '08'", "the integer 8"),
    "1:30": ("the integer 90", "the string '1:30'"), "190:20:30.15": ("the number 685230.15", "the string"),
    "1_0": ("the integer 10", "the string '1_0'"), "0b1": ("the integer 1", "the string '0b1'"),
    "0x1_0": ("the integer 16", "the string"), "0x10": ("the integer 16", "a string in YAML 1.2's JSON schema"),
    "1e3": ("the string '1e3'", "the number 1000.0"), "1.0e3": ("the string", "the number 1000.0"),
    "on": ("the boolean true", "the string 'on'"), "Off": ("the boolean false", "the string 'Off'"),
    "yes": ("the boolean true", "the string 'yes'"), "NO": ("the boolean false", "the string 'NO'"),
    "y": ("the boolean true", "the string 'y'"), "n": ("the boolean false", "the string 'n'"),
    "2001-12-14": ("a date", "the string '2001-12-14'"), "=": ("the default-value key", "the string '='"),
}
SAME = {"1": 1, "0": 0, "-3": -3, "1.5": 1.5, ".inf": float("inf"), "-.inf": float("-inf"), "true": True,
        "False": False, "null": None, "~": None, "unet": "unet", "cuda:1": "cuda:1", "1.0": 1.0, "+1": 1}


@pytest.mark.parametrize("text", sorted(AMBIGUOUS))
@pytest.mark.parametrize("place", ["gpu_id: {}", "{}: 1", "components: [{}, unet]", "components: {{{}: {{}}}}",
                                   "components: {{unet: {{after: [{}]}}}}", "exclude: [{}]"])
def test_a_scalar_yaml_1_1_and_1_2_read_differently_is_a_problem_wherever_it_is(text, place):
    line = place.format(text)
    doc = loader.load(f"version: 1\n{line}\n".encode(), "p.yaml")
    ambiguous = [p for p in doc.problems if p.rule == "PLN010"]
    column = len(place.split("{}")[0].replace("{{", "{")) + 1
    assert len(ambiguous) == 1 and (ambiguous[0].line, ambiguous[0].column) == (2, column)
    first, second = AMBIGUOUS[text]
    assert f"in YAML 1.1 but {second}" in ambiguous[0].message and first in ambiguous[0].message
    assert "quote it" in ambiguous[0].fix  # what to write, never a silent choice


@pytest.mark.parametrize("text", sorted(SAME))
def test_a_scalar_both_versions_read_alike_is_no_problem(text):
    doc = loader.load(f"x: {text}\n".encode(), "p.yaml")
    assert doc.problems == [] and doc.data == {"x": SAME[text]}


def test_the_fix_says_what_to_write():
    fixes = {text: loader.load(f"x: {text}\n".encode(), "p.yaml").problems[0].fix for text in ("010", "on", "1:30")}
    assert fixes["010"] == "write 8 or 10, whichever you mean, or quote it ('010') to keep the text"
    assert fixes["on"] == "write true, or quote it ('on') to keep the text"
    assert fixes["1:30"] == "write 90, or quote it ('1:30') to keep the text"


# -- aliases, anchors, budget -------------------------------------------------------------------------------------

def test_nodes_read_through_an_alias_are_located_at_the_alias():
    doc = loader.load(b"base: &b {afte: [vae]}\nx:\n  unet: *b\n", "p.yaml")
    assert doc.where(("x", "unet")) == (3, 9)
    assert doc.where(("x", "unet", "afte"), key=True) == (3, 9)
    assert doc.where(("base", "afte"), key=True) == (1, 11)


def test_refusals_and_spellings_follow_aliases():
    doc = loader.load(b"a: &a !!int abc\nb: &b 1.0\nc: *a\nd: [*b]\n", "p.yaml")
    assert [p.line for p in doc.problems] == [1]  # the refused node is reported once, where it is written
    assert doc.is_refused(("c",)) and not doc.is_refused(("d", 0))
    assert doc.raw(("d", 0)) == "1.0"


def test_alias_errors_are_located_problems():
    cases = {b"a: *x\n": ("PLN003", 1, 4), b"a: &x 1\nb: &x 2\n": ("PLN003", 2, 4),
             b"a: &x [1, *x]\n": ("PLN007", 1, 11), b"&k a: 1\n*k : 2\n": ("PLN006", 2, 1)}
    for raw, expected in cases.items():
        assert [(p.rule, p.line, p.column) for p in loader.load(raw, "p.yaml").problems] == [expected], raw


def test_alias_chains_deeper_than_the_limit_are_refused():
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 70)]
    doc = loader.load("\n".join(lines).encode(), "p.yaml")
    assert [p.rule for p in doc.problems] == ["PLN007"] and "nests too deeply" in doc.problems[0].message


def test_a_number_too_long_to_read_is_a_problem():
    doc = loader.load(b"gpu_id: " + b"1" * 5000 + b"\n", "p.yaml")
    assert [(p.rule, p.line, p.column) for p in doc.problems] == [("PLN007", 1, 9)]


# -- libyaml or not ------------------------------------------------------------------------------------------------

LOADERS = [yaml.SafeLoader] + ([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])


def _problems_with(loader_class, text):
    with mock.patch.object(loader, "_Loader", loader_class):
        return validate.check_document(loader.load(text.encode("utf-8"), "fuzz.yaml"))[1]


# YAML-ish fragments where libyaml and PyYAML are known to differ: tabs, tags, block scalars, odd line breaks.
_DIVERGING = ["\t", "!", "!!int ", "|", ">+", "\x85", "\u2028", "\ufeff", "\r", "? ", "{b: }", "&a ", "*a"]


@pytest.mark.skipif(len(LOADERS) < 2, reason="libyaml is not installed")
@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_DIVERGING + ["a", ": ", "\n", "- ", "[", "]", ",", "#x", "1", "on", "'", '"']),
                max_size=30).map("".join))
def test_libyaml_and_pyyaml_give_the_same_problems(text):
    assert _problems_with(yaml.CSafeLoader, text) == _problems_with(yaml.SafeLoader, text)


# -- property: structured YAML with standard tags, anchors, aliases and odd scalars -----------------------------

_ODD = ["1", "0", "127", "128", "-1", "+1", "010", "0o10", "0x10", "0x1_0", "08", "1:30", "1_0", "0b1", "1e3",
        "1.0", ".inf", "-.inf", ".nan", "on", "Off", "yes", "NO", "y", "n", "~", "null", "true", "False", "",
        "2001-12-14", "2001-13-45", "=", "<<", "cuda", "cuda:1", "cuda:128", "cuda:01", "gpu", "cpu", "unet", "vae",
        "text_encoder", "'on'", '"cuda\\n"', '"unet\\n"', "'010'", "1" * 30, "é", "\U0001f600", "a b", "chain"]
_TAGS = ["", "", "", "!!int ", "!!float ", "!!bool ", "!!null ", "!!str ", "!!timestamp ", "!!binary ", "!foo ", "! "]
_KEYS = ["version", "device", "gpu_id", "components", "exclude", "pipeline", "class", "source", "torch_dtype",
         "after", "policy", "budget", "device_map", "unet", "vae", "text_encoder", "on", "010", "<<", "1:30", "y"]
_ANCHORS = ["a", "b"]


@st.composite
def _documents(draw):
    """A plan-like document: top-level `key: value` lines whose values are flow nodes with standard tags,
    anchors (a few reused on purpose) and aliases to anchors written before (a few to none)."""
    anchors: list[str] = []

    def node(depth: int) -> str:
        kind = draw(st.sampled_from(["scalar"] * 4 + ["alias", "list", "map", "anchor"] if depth < 3 else ["scalar"]))
        if kind in ("scalar", "alias"):
            return draw(st.sampled_from(_TAGS)) + draw(st.sampled_from(_ODD))
        if kind == "alias" and anchors:
            return "*" + draw(st.sampled_from(anchors * 4 + ["undefined"]))
        if kind == "anchor":
            name = draw(st.sampled_from([f"a{len(anchors)}"] * 5 + (anchors[:1] or ["a0"])))
            anchors.append(name)
            return f"&{name} {node(depth + 1)}"
        tag = draw(st.sampled_from(["", "", "", "!!seq ", "!!map ", "!!set ", "!!omap ", "!!str "]))
        count = draw(st.integers(0, 3))
        if kind == "list":
            return tag + "[" + ", ".join(node(depth + 1) for _ in range(count)) + "]"
        return tag + "{" + ", ".join(f"{draw(st.sampled_from(_KEYS))}: {node(depth + 1)}" for _ in range(count)) + "}"

    count = draw(st.integers(1, 8))
    return "".join(f"{draw(st.sampled_from(_KEYS))}: {node(0)}\n" for _ in range(count))


@settings(max_examples=300, deadline=None)
@given(_documents())
def test_structured_yaml_gives_only_known_located_problems(text):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "plan.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        problems = planner.check(path)  # never raises
    lines = len(re.split("\r\n|[\n\r\x85\u2028\u2029]", text))  # YAML's line breaks
    for p in problems:
        assert p.rule in rules.RULES, p
        assert 1 <= p.line <= lines and p.column >= 1, p
    if len(LOADERS) == 2:
        assert _problems_with(yaml.CSafeLoader, text) == _problems_with(yaml.SafeLoader, text)
