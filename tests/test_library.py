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


# -- `uses`: the order one pipeline call really runs the components, measured on the tiny builds ------------------

def _tiny_runs() -> list[tuple[str, str]]:
    """(plan, tiny kind) for every library plan whose class a tiny build makes (a kind's own plans, and the plans
    of the same class: sd3.5-large runs on the sd3 build)."""
    from planner import tiny

    by_class = {spec.pipeline: kind for kind, spec in tiny.KINDS.items()}
    return [(path.stem, by_class[_raw(path)["pipeline"]["class"]]) for path in LIBRARY
            if _raw(path)["pipeline"]["class"] in by_class]


def _merged(names) -> list[str]:
    """`names` with consecutive repeats of one component merged (SD runs its text encoder twice in a row)."""
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


def _record_forwards(pipe, log: list[str]) -> None:
    """Append a model component's name to `log` whenever any of its modules runs: a vae's `encode`/`decode` run
    its encoder and decoder, never its own forward."""
    import torch

    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for module in component.modules():
                module.register_forward_pre_hook(lambda _module, _args, name=name: log.append(name))


@pytest.mark.parametrize("plan, kind", _tiny_runs())
def test_call_order_is_the_order_planner_apply_runs_the_components(plan, kind, tiny_builds, tmp_path, monkeypatch,
                                                                   capsys):
    """`planner apply --dry-run` of the plan on its tiny build: the components its forwards ran, in order
    (consecutive repeats merged; components the plan neither schedules nor names in `uses` left out: own hooks,
    exclusions), are the plan's `call_order`, less the components the build lacks (None: skipped)."""
    pytest.importorskip("diffusers")
    from PIL import Image

    from planner import tiny
    from planner.cli import main
    from planner.executor import source as sources

    if kind == "wan-i2v":
        pytest.importorskip("ftfy", reason="WanImageToVideoPipeline needs ftfy to clean its prompts")
    folder = tiny_builds[kind]
    image = tmp_path / "input.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(image)
    log: list[str] = []
    pipes = []
    load = sources.load_pipeline

    def load_and_record(*args, **kwargs):
        pipe = load(*args, **kwargs)
        _record_forwards(pipe, log)
        pipes.append(pipe)
        return pipe

    monkeypatch.setattr(sources, "load_pipeline", load_and_record)
    spec = tiny.KINDS[kind]
    argv = ["apply", str(ROOT / "plans" / f"{plan}.yaml"), "--source", str(folder), "--dry-run", "--quiet",
            *(["--image", str(image)] if spec.image else []), *spec.call_args]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    library_plan = planner.load_plan(ROOT / "plans" / f"{plan}.yaml")
    scheduled = set(library_plan.sequence) | set(library_plan.call_order)
    present = {name for name, component in pipes[0].components.items() if component is not None}
    recorded = _merged([name for name in log if name in scheduled])
    assert recorded == _merged([name for name in library_plan.call_order if name in present])
    assert len(recorded) >= 3  # an encoder, a denoiser and a decoder at least: the recorder saw the call


@plans
def test_uses_is_written_only_where_it_differs_from_the_sequence(path):
    plan = planner.load_plan(path)
    assert plan.uses is None or plan.uses != plan.sequence
    if plan.uses is not None:
        assert re.search(r"^# uses: ", path.read_text(encoding="utf-8"), re.MULTILINE), f"{path.name}: say why"
