"""The plans library (`plans/*.yaml`, not the examples): every plan is clean, resolves to its diffusers class's own
offload sequence and exclusions (from the shipped index), is written as a DAG, and accounts for every model of its
class: a model left to a hook of its own (the ControlNet classes' `controlnet`) is in `own_hook`, with a comment
saying why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import planner
from planner import index

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted((ROOT / "plans").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../schemas/plan.schema.json"
DENOISERS = frozenset({"unet", "transformer", "transformer_2"})
DECODERS = frozenset({"vae", "movq"})
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")

plans = pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _record(path: Path) -> index.Pipeline:
    record = index.get(_raw(path)["pipeline"]["class"])
    assert record is not None, f"{path.name}: its pipeline.class is not in the index"
    return record


def _names(message: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def test_the_library_holds_at_least_25_models():
    assert len(LIBRARY) >= 25, [p.name for p in LIBRARY]


def test_each_model_has_one_plan():
    """One file per model: no two plans load the same class from the same source."""
    seen: dict[tuple[str, str], str] = {}
    for path in LIBRARY:
        pipe = _raw(path)["pipeline"]
        key = (pipe["class"], pipe["source"])
        assert key not in seen, f"{path.name} and {seen[key]} both plan {key[0]} from {key[1]}"
        seen[key] = path.name


@plans
def test_plan_is_clean_without_a_warning(path):
    assert [str(p) for p in planner.check(path)] == []


@plans
def test_plan_resolves_to_the_sequence_and_exclusions_diffusers_hooks(path):
    plan = planner.load_plan(path)
    record = _record(path)
    assert record.offload == "chain"
    assert plan.sequence == record.effective_sequence
    assert sorted(plan.exclude) == sorted(record.effective_exclude)


@plans
def test_plan_names_its_model_its_class_its_source_and_its_dtype(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == MODELINE
    assert lines[1].startswith("# ") and len(lines[1]) > 10  # the one line naming the model
    raw = _raw(path)
    assert raw["version"] == 1 and raw["device"] == "cuda"
    assert set(raw["pipeline"]) >= {"class", "source", "torch_dtype"}
    assert HUB_ID.fullmatch(raw["pipeline"]["source"]), raw["pipeline"]["source"]


@plans
def test_plan_is_a_dag_whose_denoisers_follow_their_encoders_and_whose_decoder_follows_a_denoiser(path):
    components = _raw(path)["components"]
    assert isinstance(components, dict), "write the mapping form (a DAG), not a list"
    after = {name: set((spec or {}).get("after", ())) for name, spec in components.items()}
    denoisers = DENOISERS & after.keys()
    assert denoisers, f"no denoiser among {sorted(after)}"
    for name in denoisers:
        assert after[name], f"denoiser {name} has no `after`"
    for name in DECODERS & after.keys():
        assert after[name] & denoisers, f"{name} does not run after a denoiser"


@plans
def test_every_model_of_the_class_is_planned_excluded_or_given_its_own_hook_with_a_reason(path):
    """A model left to diffusers' own-hook fallback (loaded at first use, kept until the call ends) is a choice
    the plan states in `own_hook`, with a comment line naming it; components whose kind the index cannot tell
    count too."""
    record = _record(path)
    plan = planner.load_plan(path)
    models = set(record.models) | set(record.undetermined)
    accounted = set(plan.sequence) | plan.exclude | plan.own_hook
    assert sorted(models - accounted) == []
    text = path.read_text(encoding="utf-8")
    for name in plan.own_hook:
        assert re.search(rf"^# {name}: own_hook \(", text, re.MULTILINE), f"{path.name}: say why {name} is own_hook"


def test_readme_table_lists_every_plan_with_its_class_and_sequence():
    """Once the README has its "## The plans library" section, its table is the library: one row per plan, with the
    plan's class and resolved sequence, and no row for a plan that does not exist."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.find("\n## The plans library\n")
    if start < 0:
        pytest.skip("README.md has no '## The plans library' section yet")
    end = readme.find("\n## ", start + 1)
    rows = [line for line in readme[start:end if end >= 0 else None].splitlines() if "](plans/" in line]
    listed = {m.group(1): line for line in rows for m in [re.search(r"\]\(plans/([^)]+\.yaml)\)", line)] if m}
    assert sorted(listed) == sorted(p.name for p in LIBRARY) and len(rows) == len(listed)
    for path in LIBRARY:
        plan = planner.load_plan(path)
        assert f"`{plan.pipeline_class}`" in listed[path.name], path.name
        assert f"`{' -> '.join(plan.sequence)}`" in listed[path.name], path.name
