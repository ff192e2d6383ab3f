"""The bad-plan corpus (actionlint style): every tests/data/bad/NAME.yaml sits beside NAME.out, the exact
problems it must produce; good plans sit beside NAME.seq, their resolved sequence."""


import pytest
from conftest import DATA, ROOT

import planner
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
