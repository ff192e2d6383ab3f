"""The compiled predicate must agree with jsonschema (the authority) on every document."""

import pytest
from conftest import DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import loader, rules
from planner.fastschema import compile_schema, ecma_regex

try:
    import regress
except ImportError:  # an optional oracle: check-jsonschema's regex engine
    regress = None


def agree(data):
    """The compiled predicate agrees with jsonschema, and the pruned validator that explains errors finds the
    same errors as jsonschema walking everything."""
    assert rules._fast_check()(data) == rules._authority().is_valid(data), data
    assert _errors(rules._validator(), data) == _errors(rules._authority(), data), data


def _errors(validator, data) -> list:
    return sorted((tuple(map(str, err.absolute_path)), err.validator, repr(err.instance))
                  for err in validator.iter_errors(data))


def test_agrees_on_the_corpus():
    for path in sorted((DATA / "bad").glob("*.yaml")) + sorted((DATA / "good").glob("*.yaml")):
        doc = loader.load(path.read_bytes(), str(path))
        if doc.data is not None:
            agree(doc.data)


# Strings ending in a newline are the case where Python's `$` and ECMA-262's (JSON Schema's) disagree.
names = st.sampled_from(["unet", "vae", "text_encoder", "text-encoder", "", "1x", "safety_checker", "unet\n",
                         "vae\n\n", "\nunet", "unet\r", "FluxPipeline\n"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(120, 300),
                    st.floats(allow_nan=False, width=16),
                    st.sampled_from(["cuda", "cuda:1", "cpu", "CUDA", "cuda:", "float16", "half", "", "chain",
                                     "cuda\n", "cuda:1\n", "cuda:127", "cuda:128", "cuda:01", "cuda:0", "float16\n",
                                     "chain\n"]))
values = st.recursive(st.one_of(scalars, names), lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(names, st.sampled_from(["after", "x"])), inner, max_size=4)),
    max_leaves=12)
plans = st.fixed_dictionaries({}, optional={
    "version": st.one_of(st.just(1), scalars), "device": st.one_of(st.just("cuda"), scalars),
    "gpu_id": st.one_of(st.integers(-1, 3), scalars), "components": values, "exclude": values,
    "policy": st.one_of(st.just("chain"), scalars), "pipeline": st.one_of(
        st.fixed_dictionaries({}, optional={"class": names, "source": scalars, "torch_dtype": scalars,
                                            "variant": scalars, "extra": scalars}), scalars),
    "budget": scalars, "device_map": scalars, "devcie": scalars})


@settings(max_examples=1500, deadline=None)
@given(plans)
def test_agrees_on_random_plans(data):
    agree(data)


def test_patterns_end_at_the_true_end_of_the_string_in_both():
    for data in ({"version": 1, "device": "cuda\n", "components": ["unet"]},
                 {"version": 1, "device": "cuda", "components": ["unet\n"]},
                 {"version": 1, "device": "cuda", "components": {"unet\n": None}},
                 {"version": 1, "device": "cuda", "components": ["unet"], "pipeline": {"class": "X\n"}}):
        assert rules._fast_check()(data) is False and rules._authority().is_valid(data) is False, data
        agree(data)


def test_ecma_regex_translates_only_the_end_anchor():
    assert ecma_regex("^a$").search("a") and not ecma_regex("^a$").search("a\n")
    assert ecma_regex("^a[$]$").search("a$") and ecma_regex(r"^a\$$").search("a$")
    assert not ecma_regex(r"^a\\$").search("a\\\n")


@pytest.mark.skipif(regress is None, reason="regress (check-jsonschema's ECMA-262 engine) is not installed")
@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ_9-:0\n\r \u2028é"), max_size=8))
def test_schema_patterns_agree_with_an_ecma_262_engine(text):
    for pattern in _patterns(rules._schema()):
        assert bool(ecma_regex(pattern).search(text)) == bool(regress.Regex(pattern).find(text)), (pattern, text)


def _patterns(schema) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["pattern"]} if isinstance(schema.get("pattern"), str) else set()
        return found.union(*(_patterns(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_patterns(v) for v in schema))
    return set()


def test_maximum_compiles():
    check = compile_schema({"type": "integer", "maximum": 127})
    assert check(127) and not check(128) and not check(True)


def test_unknown_keywords_fall_back_to_jsonschema():
    assert compile_schema({"type": "object", "patternProperties": {"^a": {}}, "additionalProperties": False}) is None
    assert compile_schema({"oneOf": [{"type": "string"}]}) is None


def test_recursive_reference_compiles():
    check = compile_schema({"$defs": {"t": {"type": "array", "items": {"$ref": "#/$defs/t"}}}, "$ref": "#/$defs/t"})
    assert check([[], [[]]]) and not check([[1]])
