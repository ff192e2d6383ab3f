"""`planner init` (planner.scaffold): for every class of the index, the plan it writes validates with no problem,
resolves to diffusers' chains, and, applied by the executor, installs exactly the hooks diffusers' own
`enable_model_cpu_offload` installs (combined classes that hook each connected pipeline included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stubs import bare_pipeline, combined_pipeline, stub_type

import planner
from planner import index, scaffold
from planner.cli import main

ROOT = Path(__file__).resolve().parent.parent
PLANNABLE = [n for n in index.names() if index.get(n).offload in ("chain", "connected")]
ALL = list(index.names())


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_class_with_a_chain_is_covered():
    assert len(PLANNABLE) >= 280 and {"KandinskyV22Img2ImgCombinedPipeline", "WuerstchenCombinedPipeline",
                                      "StableCascadeCombinedPipeline"} <= set(PLANNABLE)


@pytest.mark.parametrize("name", PLANNABLE)
def test_init_plan_is_clean_and_resolves_to_the_chains_diffusers_hooks(name, tmp_path):
    record = index.get(name)
    path = _write(tmp_path, name, scaffold.plan_text(name))
    assert [str(p) for p in planner.check(path)] == []
    plan = planner.load_plan(path)
    assert [(pipe, names) for pipe, names in plan.chains] == [(c.pipe, c.sequence) for c in record.chains]
    assert sorted(plan.exclude) == sorted(n for c in record.chains for n in c.exclude)
    chained = {n for c in record.chains for n in (*c.sequence, *c.exclude)}
    assert sorted(plan.own_hook) == sorted(set(record.models) - chained)


@pytest.mark.parametrize("name", [n for n in ALL if n not in PLANNABLE])
def test_classes_without_a_chain_are_refused_or_warned_as_validate_does(name, tmp_path):
    record = index.get(name)
    if record.offload == "custom":
        with pytest.raises(scaffold.NoPlan) as caught:
            scaffold.plan_text(name)
        assert caught.value.problem.rule == "PLN506"
        return
    path = _write(tmp_path, name, scaffold.plan_text(name))  # "none": the models in declaration order, said so
    assert [p.rule for p in planner.check(path)] == ["PLN507"]
    assert "no model_cpu_offload_seq" in path.read_text()


def _hooks(pipe, owners: list[str | None], modules: dict) -> dict:
    """Per hook owner (the pipeline or a connected pipeline): its hooks as (module name, the name its hook offloads
    first or None), in install order; and which modules carry no hook."""
    names = {id(m): n for n, m in modules.items()}
    found = {}
    for owner in owners:
        holder = pipe if owner is None else getattr(pipe, owner)
        found[owner] = [(names[id(h.model)], names[id(h.hook.prev_module_hook.model)]
                         if h.hook.prev_module_hook is not None else None)
                        for h in holder.__dict__.get("_all_hooks", [])]
    found["unhooked"] = sorted(n for n, m in modules.items() if getattr(m, "_hf_hook", None) is None)
    return found


@pytest.mark.parametrize("name", PLANNABLE)
def test_the_init_plan_applied_installs_exactly_diffusers_hooks(name, tmp_path, monkeypatch):
    """The executor with init's plan against diffusers' own enable_model_cpu_offload, each on a fresh instance of
    the class holding stand-in modules (built for real by the combined classes' `__init__`)."""
    diffusers = pytest.importorskip("diffusers")
    record = index.get(name)
    cls = getattr(diffusers, name)
    stub = stub_type()
    owners = [c.pipe for c in record.chains]

    def build():
        modules = {n: stub() if c.model is not False else None for n, c in record.components.items()}
        if record.combined:
            return combined_pipeline(cls, modules, diffusers.DiffusionPipeline, monkeypatch), modules
        return bare_pipeline(cls, modules), modules

    theirs, their_modules = build()
    theirs.enable_model_cpu_offload(device="cpu")
    mine, my_modules = build()
    plan = planner.load_plan(_write(tmp_path, name, scaffold.plan_text(name)))
    handle = planner.apply(mine, plan, dry_run=True)
    try:
        assert _hooks(mine, owners, my_modules) == _hooks(theirs, owners, their_modules)
    finally:
        handle.remove()
    assert all(getattr(m, "_hf_hook", None) is None for m in my_modules.values() if m is not None)


# ------------------------------------------------------------------------------------------ connected pipelines


@pytest.fixture
def kandinsky(monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    name = "KandinskyV22Img2ImgCombinedPipeline"
    record = index.get(name)
    stub = stub_type()
    modules = {n: stub() if c.model is not False else None for n, c in record.components.items()}
    pipe = combined_pipeline(getattr(diffusers, name), modules, diffusers.DiffusionPipeline, monkeypatch)
    return pipe, modules


def test_a_connected_pipeline_ending_its_call_keeps_the_plan_and_the_trace_follows(kandinsky, tmp_path):
    pipe, modules = kandinsky
    plan = planner.load_plan(_write(tmp_path, "k", scaffold.plan_text("KandinskyV22Img2ImgCombinedPipeline")))
    handle = planner.apply(pipe, plan, dry_run=True)
    before = _hooks(pipe, ["prior_pipe", "decoder_pipe"], modules)
    modules["prior_text_encoder"](__import__("torch").ones(1, 1))  # the prior chain's first model runs
    assert handle.trace.resident == {"prior_text_encoder"}
    pipe.prior_pipe.maybe_free_model_hooks()  # the prior pipeline's call ends: diffusers re-installs its chain
    assert handle.trace.resident == set() and handle.trace.call == 1  # the combined call goes on
    assert handle.state == "in force"
    assert _hooks(pipe, ["prior_pipe", "decoder_pipe"], modules) == before
    modules["unet"](__import__("torch").ones(1, 1))
    pipe.maybe_free_model_hooks()  # the combined call ends
    assert handle.trace.call == 2 and handle.trace.resident == set()
    events = [(e.event, e.component) for e in handle.trace.events]
    assert events == [("load", "prior_text_encoder"), ("offload", "prior_text_encoder"), ("load", "unet"),
                      ("offload", "unet")]
    handle.remove()
    assert "model_cpu_offload_seq" not in vars(pipe.prior_pipe) and "enable_model_cpu_offload" not in vars(pipe)


def test_a_plan_without_pipes_on_a_connected_pipeline_is_refused_unchanged(kandinsky, tmp_path):
    pipe, modules = kandinsky
    path = _write(tmp_path, "flat", "version: 1\ndevice: cuda\ncomponents: [prior_text_encoder, unet, movq]\n")
    with pytest.raises(planner.PlanError) as caught:
        planner.apply(pipe, path, dry_run=True)
    assert [p.rule for p in caught.value.problems] == ["PLN306"]
    assert "prior_pipe, decoder_pipe" in str(caught.value)
    assert all(getattr(m, "_hf_hook", None) is None for m in modules.values() if m is not None)


def test_a_wrong_or_unknown_pipe_is_refused_with_the_right_one(kandinsky, tmp_path):
    pipe, _ = kandinsky
    path = _write(tmp_path, "wrong", "version: 1\ndevice: cuda\ncomponents:\n"
                  "  prior_text_encoder: {pipe: decoder_pipe}\n"
                  "  unet: {pipe: nope_pipe, after: [prior_text_encoder]}\n")
    with pytest.raises(planner.PlanError) as caught:
        planner.apply(pipe, path, dry_run=True)
    messages = [p.text for p in caught.value.problems]
    assert any("in the chain of prior_pipe, not decoder_pipe" in m and "pipe: prior_pipe" in m for m in messages)
    assert any("no connected pipeline 'nope_pipe'" in m and "pipe: decoder_pipe" in m for m in messages)


def test_pipes_on_a_single_chain_pipeline_are_refused(tmp_path, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    record = index.get("StableDiffusionPipeline")
    stub = stub_type()
    pipe = bare_pipeline(diffusers.StableDiffusionPipeline,
                         {n: stub() if c.model is not False else None for n, c in record.components.items()})
    path = _write(tmp_path, "p", "version: 1\ndevice: cuda\ncomponents:\n  unet: {pipe: prior_pipe}\n")
    with pytest.raises(planner.PlanError) as caught:
        planner.apply(pipe, path, dry_run=True)
    assert [p.rule for p in caught.value.problems] == ["PLN306"]


# --------------------------------------------------------------------------------------------------------- CLI


def test_init_prints_a_plan_that_validates(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--pipeline-class", "StableDiffusionXLPipeline", "--dtype", "float16",
                 "--variant", "fp16"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# yaml-language-server: $schema=plan.schema.json\n")
    assert "  torch_dtype: float16\n  variant: fp16\n" in text
    plan = planner.load_plan(_write(tmp_path, "sdxl", text))
    assert plan.sequence == index.get("StableDiffusionXLPipeline").effective_sequence


def test_init_output_file_is_written_whole_and_kept_unless_forced(capsys, tmp_path):
    target = tmp_path / "plans" / "sd.yaml"
    assert main(["init", "--pipeline-class", "StableDiffusionPipeline", "-o", str(target)]) == 0
    first = target.read_text()
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not a temporary one
    with pytest.raises(SystemExit) as caught:
        main(["init", "--pipeline-class", "StableDiffusionXLPipeline", "-o", str(target)])
    assert caught.value.code == 2 and "--force" in capsys.readouterr().err
    assert target.read_text() == first
    assert main(["init", "--pipeline-class", "StableDiffusionXLPipeline", "-o", str(target), "--force"]) == 0
    assert "StableDiffusionXLPipeline" in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["sd.yaml"]  # no temporary file left behind


def test_init_modeline_points_at_the_repository_schema_from_inside_it(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "plan.schema.json").write_text("{}")
    target = tmp_path / "plans" / "deep" / "x.yaml"
    assert main(["init", "--pipeline-class", "StableDiffusionPipeline", "-o", str(target)]) == 0
    assert target.read_text().splitlines()[0] == "# yaml-language-server: $schema=../../schemas/plan.schema.json"


@pytest.mark.parametrize("argv, rule, words", [
    (["--pipeline-class", "StableDiffusionXLPipelin"], "PLN501", "did you mean 'StableDiffusionXLPipeline'"),
    (["--pipeline-class", "AudioLDM2Pipeline"], "PLN506", "fixed order of its own"),
    (["--pipeline-class", "KolorsPipeline"], "PLN502", "sentencepiece"),
    (["--pipeline-class", "StableDiffusionPipeline", "--device", "gpu"], "PLN203", "did you mean 'cuda'"),
    (["--model", "no/such/folder/here"], "PLN401", "does not exist"),
])
def test_init_mistakes_are_one_located_line_and_exit_1(argv, rule, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init", *argv]) == 1
    err = capsys.readouterr()
    assert err.out == "" and rule in err.err and words in err.err and "Traceback" not in err.err
    assert len(err.err.splitlines()) == 1


def test_init_from_a_model_folder_names_its_source_and_sizes(tiny_pipelines, tmp_path, capsys):
    from planner.folder import reader

    tiny_sd = tiny_pipelines["sd"]
    target = tmp_path / "plans" / "tiny.yaml"
    assert main(["init", "--model", str(tiny_sd), "-o", str(target)]) == 0
    text = target.read_text()
    plan = planner.load_plan(target)
    assert plan.pipeline_class == "StableDiffusionPipeline"
    assert Path(target.parent, plan.pipeline_source).resolve() == Path(tiny_sd).resolve()
    read, problems = reader.read(tiny_sd)
    assert problems == []
    for name, component in read.components.items():
        line = next(line for line in text.splitlines() if line.startswith(f"  - {name} "))
        assert f"{component.class_name}, {scaffold._size(component.bytes)}" in line
    assert planner.check(target) == []


def test_init_imports_no_torch():
    code = ("import sys; from planner.cli import main; rc = main(['init', '--pipeline-class', "
            "'FluxPipeline']); assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "transformer" in out.stdout
