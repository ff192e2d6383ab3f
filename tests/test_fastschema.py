"""The compiled predicate must agree with jsonschema (the authority) on every document."""

from conftest import DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import loader, rules
from planner.fastschema import compile_schema


def agree(data):
    assert rules._fast_check()(data) == rules._validator().is_valid(data), data


def test_agrees_on_the_corpus():
    for path in sorted((DATA / "bad").glob("*.yaml")) + sorted((DATA / "good").glob("*.yaml")):
        doc = loader.load(path.read_bytes(), str(path))
        if doc.data is not None:
            agree(doc.data)


names = st.sampled_from(["unet", "vae", "text_encoder", "text-encoder", "", "1x", "safety_checker"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=16),
                    st.sampled_from(["cuda", "cuda:1", "cpu", "CUDA", "cuda:", "float16", "half", "", "chain"]))
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


def test_unknown_keywords_fall_back_to_jsonschema():
    assert compile_schema({"type": "object", "patternProperties": {"^a": {}}, "additionalProperties": False}) is None
    assert compile_schema({"oneOf": [{"type": "string"}]}) is None


def test_recursive_reference_compiles():
    check = compile_schema({"$defs": {"t": {"type": "array", "items": {"$ref": "#/$defs/t"}}}, "$ref": "#/$defs/t"})
    assert check([[], [[]]]) and not check([[1]])
