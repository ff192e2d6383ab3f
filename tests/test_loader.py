import time

from hypothesis import given, settings
from hypothesis import strategies as st

from planner import loader
from planner.plan import Problem


def test_values_and_keys_carry_their_positions():
    doc = loader.load(b"version: 1\ncomponents:\n  unet: {after: [vae]}\n", "p.yaml")
    assert doc.problems == []
    assert doc.data == {"version": 1, "components": {"unet": {"after": ["vae"]}}}
    assert doc.key_marks[("components", "unet")] == (3, 3)
    assert doc.marks[("components", "unet", "after", 0)] == (3, 18)


def test_yaml11_boolean_keeps_its_spelling_for_messages():
    doc = loader.load(b"gpu_id: yes\n", "p.yaml")
    assert doc.data == {"gpu_id": True}
    assert doc.raw_scalars[("gpu_id",)] == "yes"


def test_python_tags_are_never_constructed(tmp_path):
    marker = tmp_path / "pwned"
    raw = f'x: !!python/object/apply:os.system ["touch {marker}"]\n'.encode()
    doc = loader.load(raw, "p.yaml")
    assert [p.rule for p in doc.problems] == ["PLN008"]
    assert not marker.exists()


def test_billion_laughs_is_refused_quickly():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghi", "bcdefghij", strict=False):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    start = time.perf_counter()
    doc = loader.load("\n".join(lines).encode(), "p.yaml")
    assert time.perf_counter() - start < 1.0
    assert [p.rule for p in doc.problems] == ["PLN007"]


def test_deep_nesting_is_refused_not_crashed():
    doc = loader.load(b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "p.yaml")
    assert [p.rule for p in doc.problems] == ["PLN007"]


def test_bom_is_accepted():
    assert loader.load("\ufeffversion: 1\n".encode(), "p.yaml").data == {"version": 1}


def _only_problems(doc):
    assert all(isinstance(p, Problem) for p in doc.problems)
    assert all(p.line >= 0 and p.column >= 0 for p in doc.problems)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_only_problems(raw):
    _only_problems(loader.load(raw, "fuzz.yaml"))


_yamlish = st.lists(st.sampled_from(
    ["version", "device", "components", "after", ":", " ", "  ", "\n", "\t", "-", "[", "]", "{", "}", ",", "&a",
     "*a", "!!python/object:x", "!!set", "<<", "---", "...", "'", '"', "#", "yes", "1", "cuda", "unet", "?", "|",
     ">", "%YAML 1.1", "\x00", "\ufeff", "é", "0x1f", "~", "null", ".inf"]), max_size=60).map("".join)


@settings(max_examples=500, deadline=None)
@given(_yamlish)
def test_random_yaml_like_text_gives_only_problems(text):
    from planner import rules

    doc = loader.load(text.encode("utf-8"), "fuzz.yaml")
    _only_problems(doc)
    _, problems = rules.check_document(doc)
    assert all(isinstance(p, Problem) for p in problems)
