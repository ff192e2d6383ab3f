"""The bad-plan corpus (actionlint style): every tests/data/bad/NAME.yaml sits beside NAME.out, the exact
problems it must produce; good plans sit beside NAME.seq, their resolved sequence. Then the rules one by one."""

import time

import pytest
import yaml
from conftest import DATA, ROOT

import planner
from planner import loader, rules
from planner.plan import Problem
from planner.rules import RULES

BAD = sorted((DATA / "bad").glob("*.yaml"))
GOOD = sorted((DATA / "good").glob("*.yaml"))


def test_corpus_is_large_enough():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_plan_gives_exactly_its_problems(path, monkeypatch):
    monkeypatch.chdir(path.parent)
    got = [str(p) for p in planner.check(path.name)]
    expected = path.with_suffix(".out").read_text(encoding="utf-8").splitlines()
    assert got == expected
    assert got, "a bad plan must produce at least one problem"
    with pytest.raises(planner.PlanError) as info:
        planner.load_plan(path.name)
    assert [str(p) for p in info.value.problems] == expected


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_plan_resolves_to_its_sequence(path):
    plan = planner.load_plan(path)
    assert plan.offload_seq == path.with_suffix(".seq").read_text().strip()
    assert planner.check(path) == []


def test_every_rule_fired_by_the_corpus_is_in_the_table_and_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    fired = {line.split(": ")[1].split()[0] for p in BAD for line in p.with_suffix(".out").read_text().splitlines()}
    assert fired <= set(RULES)
    for rule in RULES:
        assert f"| {rule} |" in readme, f"{rule} missing from the README's rule table"


def test_overrides_go_through_the_same_rules():
    good = DATA / "good" / "sdxl-dag.yaml"
    problems = planner.check(good, {"device": "cpu"})
    assert [(p.path, p.rule) for p in problems] == [("--device", "PLN202")]
    assert str(problems[0]).startswith("--device: PLN202 device 'cpu' cannot be an offload target")
    # the file's gpu_id: 1 meets an indexed device from the command line
    assert [p.rule for p in planner.check(good, {"device": "cuda:1"})] == ["PLN205"]
    assert planner.load_plan(good, {"device": "xpu", "gpu_id": 0}).gpu_id == 0
    assert [p.path for p in planner.check(good, {"gpu_id": -2})] == ["--gpu-id"]


def test_plan_keeps_locations_of_its_components():
    plan = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    assert plan.locations["components.unet"] == (13, 3)
    assert plan.locations["exclude.safety_checker"] == (15, 11)
    assert plan.problem("components.unet", "PLN301", "x").line == 13


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="libyaml is not installed")
@pytest.mark.parametrize("path", BAD + GOOD, ids=[f"{p.parent.name}/{p.stem}" for p in BAD + GOOD])
def test_results_do_not_depend_on_libyaml(path, monkeypatch):
    found = {}
    for name in ("CSafeLoader", "SafeLoader"):
        monkeypatch.setattr(loader, "_Loader", getattr(yaml, name))
        found[name] = planner.check(path)
    assert found["CSafeLoader"] == found["SafeLoader"]


def test_two_different_problems_at_one_place_are_both_reported():
    doc = loader.load(b"components: [unet]\n", "p.yaml")
    assert [(p.rule, p.line, p.column) for p in rules.check_document(doc)[1]] == [("PLN103", 1, 1)] * 2
    same = Problem("p.yaml", 1, 1, "PLN203", "x", "y")
    assert rules._sorted([same, Problem("p.yaml", 1, 1, "PLN203", "z"), same]) == [same, Problem(
        "p.yaml", 1, 1, "PLN203", "z")]


def _check(text: str, overrides=None) -> list[Problem]:
    return rules.check_document(loader.load(text.encode(), "p.yaml"), overrides)[1]


PLAN = "version: 1\ndevice: {device}\n{extra}components: [unet]\n"


@pytest.mark.parametrize("device, gpu_id, rule", [
    ("cuda:127", None, None), ("cuda", 127, None), ("cuda:0", None, None), ("cuda:128", None, "PLN203"),
    ("cuda:256", None, "PLN203"), ("cuda:99999999999999999999", None, "PLN203"), ("cuda:01", None, "PLN203"),
    ("cuda:00", None, "PLN203"), ("cuda", 128, "PLN204"), ("cuda", 256, "PLN204"), ("cuda", 10 ** 30, "PLN204"),
    ("cuda", -1, "PLN204")])
def test_device_indices_beyond_what_torch_keeps_are_refused_at_validate_time(device, gpu_id, rule):
    extra = "" if gpu_id is None else f"gpu_id: {gpu_id}\n"
    problems = _check(PLAN.format(device=device, extra=extra))
    assert [p.rule for p in problems] == ([rule] if rule else [])
    # the executor's re-check of a hand-built Plan reaches the same verdict
    assert [found[1] for found in rules.device_problems(device, gpu_id)] == ([rule] if rule else [])


def test_the_executor_recheck_covers_every_gpu_id_problem():
    for gpu_id in (True, 1.0, "1", -1, 128):
        assert [found[:2] for found in rules.device_problems("cuda", gpu_id)] == [("gpu_id", "PLN204")], gpu_id
    assert [found[1] for found in rules.device_problems("cuda:1", 1)] == ["PLN205"]


def test_an_override_beyond_127_is_located_at_its_flag():
    problems = _check(PLAN.format(device="cuda", extra=""), {"gpu_id": 200})
    assert [(p.path, p.rule) for p in problems] == [("--gpu-id", "PLN204")]
    problems = _check(PLAN.format(device="cuda", extra=""), {"device": "cuda:300"})
    assert [(p.path, p.rule) for p in problems] == [("--device", "PLN203")]


@pytest.mark.parametrize("value, rule", [('device: "cuda\\n"', "PLN203"), ('device: "cuda:1\\n"', "PLN203"),
                                         ('components: ["unet\\n"]', "PLN215"),
                                         ('components: {"unet\\n": {}}', "PLN215"),
                                         ('components: {unet: {after: ["vae\\n"]}, vae: {}}', "PLN215"),
                                         ('exclude: ["vae\\n"]', "PLN215"),
                                         ('pipeline: {class: "FluxPipeline\\n"}', "PLN104")])
def test_patterns_end_at_the_true_end_of_the_string(value, rule):
    plan = {"version": "version: 1", "device": "device: cuda", "components": "components: [unet]"}
    plan[value.split(":")[0]] = value
    problems = _check("\n".join(plan.values()) + "\n")
    assert rule in {p.rule for p in problems} and all(p.line == 1 + list(plan).index(value.split(":")[0])
                                                          for p in problems)


@pytest.mark.parametrize("device, meant", [("gpu", "cuda"), ("nvidia", "cuda"), ("cuda0", "cuda:0"),
                                           ("gpu:0", "cuda:0"), ("gpu1", "cuda:1"), ("rocm", "cuda"),
                                           ("metal", "mps"), ("CUDA", "cuda"), ("Cuda:1", "cuda:1"),
                                           ("cdua", "cuda"), ('"cuda:"', "cuda"), ('"cuda\\n"', "cuda"),
                                           ("xpuu", "xpu"), ("tpu", "xla")])
def test_a_misspelt_device_suggests_the_closest_real_one_cuda_first(device, meant):
    problems = _check(PLAN.format(device=device, extra=""))
    assert [(p.rule, p.fix) for p in problems] == [("PLN203", f"did you mean {meant!r}?")]


def test_allowed_keys_never_list_reserved_keys():
    for text in ("budgte: 1\n", "extra: 1\n", "devcie_map: 1\n"):
        fixes = " ".join(p.fix for p in _check(PLAN.format(device="cuda", extra=text)))
        assert "budget" not in fixes and "device_map" not in fixes, fixes
    assert "policy" in _check(PLAN.format(device="cuda", extra="extra: 1\n"))[0].fix


@pytest.mark.parametrize("text, at, place", [
    ("version: 1\ndevice: cuda\nclass: X\ncomponents: [unet]\n", (3, 1), "under `pipeline:`"),
    ("version: 1\ndevice: cuda\nsource: x/y\ncomponents: [unet]\n", (3, 1), "under `pipeline:`"),
    ("version: 1\npipeline: {device: cuda}\ndevice: cuda\ncomponents: [unet]\n", (2, 12), "at the top level"),
    ("version: 1\ndevice: cuda\nafter: [unet]\ncomponents: [unet]\n", (3, 1), "in an entry of `components:`"),
    ("version: 1\ndevice: cuda\ncomponents:\n  unet: {class: X}\n", (4, 10), "under `pipeline:`"),
    ("version: 1\ndevice: cuda\ncomponents:\n  unet: {}\n  gpu_id: 1\n", (5, 11), "at the top level"),
    ("version: 1\ndevice: cuda\ncomponents:\n  unet: {}\n  after: [unet]\n", (5, 10), "in an entry of")])
def test_a_key_valid_at_another_level_looks_mis_indented(text, at, place):
    problems = _check(text)
    assert [(p.line, p.column) for p in problems] == [at]
    assert problems[0].fix.endswith("it looks mis-indented") and place in problems[0].fix


def _many_names_plan(count: int) -> str:
    lines = ["version: 1", "device: cuda", "components:"]
    for i in range(count):
        after, extra = [f"comp_{(i + 1) % count:04d}"], ""  # a ring: one cycle through every component
        if i % 3 == 0:  # every third entry: a misspelt name in `after` (did you mean) and an unknown key
            after.append(f"comp_{(i * 7) % count:04d}x")
            extra = f", extra_{i}: 1"
        lines.append(f"  comp_{i:04d}: {{after: [{', '.join(after)}]{extra}}}")
    lines.append("exclude: [" + ", ".join(f"comp_{i:04d}" for i in range(0, count, 3)) + "]")
    lines += [f"unknown_{i}: 1" for i in range(count // 3)]
    return "\n".join(lines) + "\n"


def test_thousands_of_names_and_problems_validate_in_well_under_a_second():
    _check("version: 1\ndevice: cuda\ncomponents: [unet]\nx: 1\n")  # jsonschema imported once, as in any run
    text = _many_names_plan(3000)
    start = time.process_time()  # this process's CPU time: other work on the machine does not count
    problems = _check(text)
    elapsed = time.process_time() - start
    assert len(problems) > 4000 and {"PLN101", "PLN209", "PLN211", "PLN212"} <= {p.rule for p in problems}
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    assert max(len(p.fix) for p in problems) < 300  # a fix lists a few names, never all of them


def test_did_you_mean_stays_useful_among_many_names():
    names = [f"component_{i}" for i in range(3000)]
    after = "{after: [component_2999x]}"
    text = "version: 1\ndevice: cuda\ncomponents:\n" + "".join(f"  {n}: {{}}\n" for n in names[:-1])
    text += f"  {names[-1]}: {after}\n"
    assert [p.fix for p in _check(text) if p.rule == "PLN209"] == ["did you mean 'component_2999'?"]
