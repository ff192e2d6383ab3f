"""The compiled predicate must agree with jsonschema (the authority) on every document."""

import pytest
from conftest import DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import loader
from planner.fastschema import compile_schema, ecma_regex
from planner.rules import schema

try:
    import regress
except ImportError:  # an optional oracle: check-jsonschema's regex engine
    regress = None


def agree(data):
    """The compiled predicate agrees with jsonschema, and the pruned validator that explains errors finds the
    same errors as jsonschema walking everything."""
    assert schema.fast_check()(data) == schema.authority().is_valid(data), data
    assert _errors(schema.validator(), data) == _errors(schema.authority(), data), data


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
sizes = st.one_of(st.integers(-2, 1 << 40), st.sampled_from(["8GiB", "512 MB", "6.5GB", "1024", "8gb", "8G", "1e9",
                                                              "8GiB\n", "8  GiB", "-1", ".5GB", "1.5 KiB", ""]))
values = st.recursive(st.one_of(scalars, names), lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(names, st.sampled_from(["after", "x"])), inner, max_size=4)),
    max_leaves=12)
plans = st.fixed_dictionaries({}, optional={
    "version": st.one_of(st.just(1), scalars), "device": st.one_of(st.just("cuda"), scalars),
    "gpu_id": st.one_of(st.integers(-1, 3), scalars), "components": values, "exclude": values,
    "policy": st.one_of(st.sampled_from(["chain", "budget"]), scalars), "pipeline": st.one_of(
        st.fixed_dictionaries({}, optional={"class": names, "source": scalars, "torch_dtype": scalars,
                                            "variant": scalars, "extra": scalars}), scalars),
    "budget": st.one_of(sizes, scalars), "reserve": st.one_of(sizes, scalars), "keep_host_copy": scalars,
    "uses": values, "device_map": scalars, "devcie": scalars})


@settings(max_examples=1500, deadline=None)
@given(plans)
def test_agrees_on_random_plans(data):
    agree(data)


def test_patterns_end_at_the_true_end_of_the_string_in_both():
    for data in ({"version": 1, "device": "cuda\n", "components": ["unet"]},
                 {"version": 1, "device": "cuda", "components": ["unet\n"]},
                 {"version": 1, "device": "cuda", "components": {"unet\n": None}},
                 {"version": 1, "device": "cuda", "components": ["unet"], "pipeline": {"class": "X\n"}}):
        assert schema.fast_check()(data) is False and schema.authority().is_valid(data) is False, data
        agree(data)


def test_ecma_regex_translates_only_the_end_anchor():
    assert ecma_regex("^a$").search("a") and not ecma_regex("^a$").search("a\n")
    assert ecma_regex("^a[$]$").search("a$") and ecma_regex(r"^a\$$").search("a$")
    assert not ecma_regex(r"^a\\$").search("a\\\n")


@pytest.mark.skipif(regress is None, reason="regress (check-jsonschema's ECMA-262 engine) is not installed")
@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ_9-:0\n\r \u2028é"), max_size=8))
def test_schema_patterns_agree_with_an_ecma_262_engine(text):
    for pattern in _patterns(schema.schema()):
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


def test_keywords_before_type_never_test_an_instance_of_another_type():
    check = compile_schema({"minLength": 1, "pattern": "^a", "type": "string"})
    assert check("ab") and not check(5) and not check(["a"]) and not check("")


leaf_schemas = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "array", "object", "null",
                                                    "boolean"])}),
    st.builds(lambda t: {"type": t}, st.lists(st.sampled_from(["string", "integer", "array", "object"]), min_size=1,
                                              max_size=2, unique=True)),
    st.builds(lambda v: {"const": v}, st.sampled_from([1, "a", True, None, 1.0])),
    st.builds(lambda v: {"enum": v}, st.lists(st.sampled_from(["a", "b", 1, True]), min_size=1, max_size=3)),
    st.builds(lambda v: {"type": "string", "enum": v}, st.lists(st.sampled_from(["a", "b"]), min_size=1)),
    st.builds(lambda v: {"type": "integer", "const": v}, st.sampled_from([0, 1])),
    st.builds(lambda v: {"pattern": v}, st.sampled_from(["^a$", "b", "^[a-z]+$"])),
    st.builds(lambda n: {"minLength": n}, st.integers(0, 2)),
    st.builds(lambda n: {"minimum": n, "maximum": n + 2}, st.integers(-1, 1)),
    st.builds(lambda n: {"type": "integer", "minimum": n}, st.integers(-1, 1)),
    st.builds(lambda n: {"minItems": n}, st.integers(0, 2)),
    st.builds(lambda n: {"minProperties": n}, st.integers(0, 2)),
    st.builds(lambda r: {"required": r}, st.lists(st.sampled_from(["a", "b"]), unique=True)),
    st.just({"not": {}}), st.just({}))
random_schemas = st.recursive(leaf_schemas, lambda inner: st.one_of(
    st.builds(lambda s: {"items": s}, inner), st.builds(lambda s: {"propertyNames": s}, inner),
    st.builds(lambda s: {"not": s}, inner),
    st.builds(lambda p, a: {"type": "object", "properties": p, "additionalProperties": a},
              st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2), st.one_of(st.booleans(), inner)),
    st.builds(lambda a: {"additionalProperties": a}, st.one_of(st.booleans(), inner)),
    st.builds(lambda a, b: {**a, **b}, inner, inner)), max_leaves=6)
instances = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.sampled_from([1.0, 2.5]),
                                   st.sampled_from(["", "a", "ab", "b", "A", "a\n"])),
                         lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                 st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)),
                         max_leaves=8)


@settings(max_examples=1000, deadline=None)
@given(random_schemas, instances)
def test_agrees_with_jsonschema_on_random_schemas(sub_schema, instance):
    """Every keyword the generator compiles, alone and nested, on random data (integers never floats or bools)."""
    import jsonschema

    authority = schema._validator_class(jsonschema, {})(sub_schema)
    assert compile_schema(sub_schema)(instance) == authority.is_valid(instance), (sub_schema, instance)
