"""The shipped index of diffusers pipelines: fresh against the installed diffusers, right about what diffusers
hooks, and readable without torch or diffusers."""

import importlib.util
import json
import subprocess
import sys
import types

import pytest
from conftest import ROOT
from stubs import bare_pipeline, combined_pipeline, stub_type

import planner.index as index
from planner.index import Chain


def _script(name: str):
    """scripts/NAME.py as a module: a maintainer's script, no part of the package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


generate = _script("generate_index")
HEAVY = ("torch", "diffusers", "transformers", "accelerate")


@pytest.fixture(scope="session")
def shipped():
    """The committed planner/data/pipelines.json, as parsed JSON."""
    return json.loads(index.PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def regenerated():
    """The index built from the installed diffusers (about 20 s: it imports every pipeline class)."""
    pytest.importorskip("diffusers")
    return generate.build()


# ------------------------------------------------------------------------------------------------ (a) freshness


def _backend_drift(old: dict, new: dict) -> set[str]:
    """Classes skipped on one side and indexed on the other: an optional backend installed in one place only."""
    return (old["skipped"].keys() & new["pipelines"].keys()) | (old["pipelines"].keys() & new["skipped"].keys())


def _without(data: dict, names: set[str]) -> dict:
    return {**data, **{k: {n: v for n, v in data[k].items() if n not in names} for k in ("pipelines", "skipped")}}


def test_regenerating_from_the_installed_diffusers_gives_the_shipped_file(regenerated, shipped, tmp_path):
    out = tmp_path / "pipelines.json"
    generate.write(regenerated, out)
    fresh = json.loads(out.read_text(encoding="utf-8"))
    lines = generate.differences(shipped, fresh)
    versions = [k for k in ("diffusers_version", "transformers_version") if shipped.get(k) != fresh.get(k)]
    if versions:
        drift = generate.drift(shipped, fresh)
        pytest.skip(
            "index made with "
            + ", ".join(f"{k.split('_')[0]} {shipped.get(k)} (installed: {fresh.get(k)})" for k in versions)
            + f": {drift['added']} classes added, {drift['removed']} removed, {drift['changed']} changed; "
            "run python scripts/generate_index.py\n" + "\n".join(lines)
        )
    moved = _backend_drift(shipped, fresh)
    if lines and moved and not generate.differences(_without(shipped, moved), _without(fresh, moved)):
        pytest.skip(f"optional backends differ from the generating machine's: {sorted(moved)}")
    assert not lines, "index differs from the installed diffusers:\n" + "\n".join(lines)
    assert out.read_bytes() == index.PATH.read_bytes(), "same content, different formatting: regenerate the file"


def test_the_command_writes_the_index_and_check_reports_each_difference(regenerated, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "build", lambda: regenerated)
    out = tmp_path / "data" / "pipelines.json"
    assert generate.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == regenerated
    assert out.stat().st_mode & 0o777 == 0o644
    assert generate.main(["--check", "--out", str(out)]) == 0
    assert "matches diffusers" in capsys.readouterr().out
    stale = json.loads(out.read_text(encoding="utf-8"))
    stale["pipelines"]["FluxPipeline"]["exclude"] = ["vae"]
    out.write_text(generate.dumps(stale), encoding="utf-8")
    assert generate.main(["--check", "--out", str(out)]) == 1
    assert 'pipelines: changed FluxPipeline: exclude: ["vae"] -> []' in capsys.readouterr().out


def test_differences_name_each_added_removed_and_changed_class(shipped):
    new = json.loads(json.dumps(shipped))
    new["diffusers_version"] = "9.9.9"
    del new["pipelines"]["FluxPipeline"]
    new["pipelines"]["NewPipeline"] = new["pipelines"]["StableDiffusionPipeline"]
    new["pipelines"]["StableDiffusionXLPipeline"]["sequence"] = "unet->vae"
    lines = generate.differences(shipped, new)
    assert lines[0] == f"diffusers_version: {shipped['diffusers_version']} -> 9.9.9"
    assert "pipelines: removed FluxPipeline" in lines
    assert "pipelines: added NewPipeline" in lines
    changed = [line for line in lines if line.startswith("pipelines: changed StableDiffusionXLPipeline: ")]
    assert len(changed) == 1 and 'sequence: "text_encoder->text_encoder_2->image_encoder->unet->vae" -> ' in changed[0]
    assert generate.drift(shipped, new) == {"added": 1, "removed": 1, "changed": 1}


def test_the_written_file_is_sorted_and_has_no_timestamp(shipped):
    text = index.PATH.read_text(encoding="utf-8")
    assert text == generate.dumps(shipped)
    assert set(shipped) == {"diffusers_version", "format", "pipelines", "skipped", "transformers_version"}


# ---------------------------------------------------------------------------------------------- (b) known entries


def test_about_280_classes_carry_a_sequence():
    records = [index.get(name) for name in index.names()]
    assert len(records) >= 250
    assert sum(1 for r in records if r.model_cpu_offload_seq) >= 250
    assert index.load().diffusers_version.count(".") == 2


def test_stable_diffusion_chains_its_encoders_and_keeps_the_safety_checker_on_the_device():
    sd = index.get("StableDiffusionPipeline")
    assert sd.model_cpu_offload_seq == "text_encoder->image_encoder->unet->vae"
    assert sd.offload == "chain"
    assert sd.chains == (Chain(None, ("text_encoder", "image_encoder", "unet", "vae"), ("safety_checker",)),)
    assert sd.models == ("image_encoder", "safety_checker", "text_encoder", "unet", "vae")
    assert set(sd.components) - set(sd.models) == {"feature_extractor", "scheduler", "tokenizer"}
    assert sd.components["unet"].types == ("diffusers.UNet2DConditionModel",)
    assert set(sd.optional) == {"safety_checker", "feature_extractor", "image_encoder"}


def test_components_whose_declaration_cannot_tell_are_undetermined_not_guessed():
    upscale = index.get("StableDiffusionUpscalePipeline")  # safety_checker: Any | None
    assert upscale.components["safety_checker"].model is None
    assert "safety_checker" in upscale.undetermined and "safety_checker" not in upscale.models
    assert upscale.effective_exclude == ("safety_checker",)  # diffusers would move it if it is a module
    cosmos = index.get("CosmosTextToWorldPipeline")  # a bare stand-in while cosmos_guardrail is not installed
    assert cosmos.components["safety_checker"].model is None
    animatediff = index.get("AnimateDiffPipeline")  # a union of schedulers, one a dummy (no scipy) or not
    assert animatediff.components["scheduler"].model is False
    assert index.get("IFPipeline").components["watermarker"].model is True  # a ModelMixin named like a helper


def test_sdxl_and_flux_sequences_are_recorded_as_written():
    sdxl = index.get("StableDiffusionXLPipeline")
    assert sdxl.model_cpu_offload_seq == "text_encoder->text_encoder_2->image_encoder->unet->vae"
    assert sdxl.effective_sequence == sdxl.sequence and sdxl.exclude == ()
    flux = index.get("FluxPipeline")
    assert flux.model_cpu_offload_seq == "text_encoder->text_encoder_2->image_encoder->transformer->vae"
    assert flux.effective_sequence == flux.sequence
    assert {"tokenizer_2", "scheduler", "feature_extractor"} <= set(flux.components) - set(flux.models)


def test_a_repeated_name_is_kept_as_written_and_hooked_at_its_first_place():
    k3 = index.get("Kandinsky3Img2ImgPipeline")
    assert k3.model_cpu_offload_seq == "text_encoder->movq->unet->movq"
    assert k3.sequence == ("text_encoder", "movq", "unet", "movq")
    assert k3.effective_sequence == ("text_encoder", "movq", "unet")


def test_an_exclusion_that_is_in_the_sequence_is_chained():
    amused = index.get("AmusedImg2ImgPipeline")
    assert "vqvae" in amused.exclude and "vqvae" in amused.effective_sequence
    assert amused.effective_exclude == ()
    prior = index.get("KandinskyPriorPipeline")
    assert prior.exclude == ("prior",) and prior.effective_sequence == ("text_encoder", "prior")


def test_combined_classes_that_override_offload_install_one_chain_per_connected_pipeline():
    expected = {
        "KandinskyV22Img2ImgCombinedPipeline": (
            Chain("prior_pipe", ("prior_text_encoder", "prior_image_encoder", "prior_prior"), ()),
            Chain("decoder_pipe", ("unet", "movq"), ()),
        ),
        "WuerstchenCombinedPipeline": (
            Chain("prior_pipe", ("prior_text_encoder", "prior_prior"), ()),
            Chain("decoder_pipe", ("text_encoder", "decoder", "vqgan"), ()),
        ),
        "StableCascadeCombinedPipeline": (
            Chain("prior_pipe", ("prior_image_encoder", "prior_text_encoder", "prior_prior"), ()),
            Chain("decoder_pipe", ("text_encoder", "decoder", "vqgan"), ()),
        ),
    }
    for name, chains in expected.items():
        record = index.get(name)
        assert (record.combined, record.offload, record.chains) == (True, "connected", chains), name
        assert record.effective_sequence is None
    prior = index.get("WuerstchenCombinedPipeline").connected[0]
    assert prior.pipeline_class == "WuerstchenPriorPipeline" and prior.model_cpu_offload_seq == "text_encoder->prior"
    assert dict(prior.components) == {
        "prior": "prior_prior",
        "scheduler": "prior_scheduler",
        "text_encoder": "prior_text_encoder",
        "tokenizer": "prior_tokenizer",
    }


def test_combined_classes_without_an_override_chain_their_own_sequence():
    k21 = index.get("KandinskyCombinedPipeline")
    assert (k21.combined, k21.offload) == (True, "chain")
    assert k21.chains == (
        Chain(None, ("text_encoder", "unet", "movq", "prior_prior", "prior_image_encoder", "prior_text_encoder"), ()),
    )
    assert [p.pipeline_class for p in k21.connected] == ["KandinskyPriorPipeline", "KandinskyPipeline"]
    k22 = index.get("KandinskyV22CombinedPipeline")
    assert k22.chains == (Chain(None, ("prior_text_encoder", "prior_image_encoder", "unet", "movq"), ("prior_prior",)),)


def test_classes_whose_override_ignores_the_sequence_have_no_chain():
    audio = index.get("AudioLDM2Pipeline")
    assert (audio.offload, audio.model_cpu_offload_seq, audio.chains) == ("custom", None, ())
    assert index.get("DDPMPipeline").offload == "chain"
    assert index.get("LDMPipeline").offload == "none"


def test_sequence_names_that_are_not_components_are_skipped_like_diffusers_does():
    versatile = index.get("VersatileDiffusionTextToImagePipeline")
    assert versatile.unknown_in_sequence == ("bert", "unet", "vqvae")
    assert versatile.effective_sequence == ()


# ------------------------------------------------------------------------------------------------ reader lookups


def test_unknown_class_gets_none_and_did_you_mean_candidates():
    assert index.get("StableDifusionPipeline") is None
    assert index.close("StableDifusionPipeline")[0] == "StableDiffusionPipeline"
    assert index.close("stablediffusionxlpipeline")[0] == "StableDiffusionXLPipeline"
    assert index.close("OnnxStableDifusionPipeline")[0] == "OnnxStableDiffusionPipeline"
    assert index.close("zzzzzzzz") == ()


def test_did_you_mean_never_compares_a_huge_name(monkeypatch):
    """difflib's cost grows with the name's length times every known class name; a name over 3 times the longest
    known one cannot match, so it never reaches difflib (a name of usual length does)."""
    import difflib

    compared, spied = [], difflib.get_close_matches

    def spy(word, *args, **kwargs):
        compared.append(word)
        return spied(word, *args, **kwargs)

    monkeypatch.setattr(difflib, "get_close_matches", spy)
    assert index.close("StableDiffusionPipeline" * 50_000) == ()
    assert compared == []
    assert index.close("StableDifusionPipeline")[0] == "StableDiffusionPipeline"
    assert compared == ["stabledifusionpipeline"]


def test_records_are_frozen_and_built_once():
    sd = index.get("StableDiffusionPipeline")
    assert index.get("StableDiffusionPipeline") is sd
    with pytest.raises(AttributeError):
        sd.offload = "custom"
    with pytest.raises(TypeError):
        sd.components["unet"] = None


def test_an_index_of_another_format_is_refused(tmp_path):
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps({"format": 99, "diffusers_version": "0", "pipelines": {}, "skipped": {}}))
    with pytest.raises(ValueError, match="format 99 is not 1: run python scripts/generate_index.py"):
        index.load(path)


# --------------------------------------------------------------------------------------- (c) no heavy imports


def test_reading_the_index_imports_neither_torch_nor_diffusers():
    code = (
        "import sys, planner.index as i\n"
        "r = i.get('StableDiffusionPipeline'); r.models; r.chains; i.get('WuerstchenCombinedPipeline').chains\n"
        "i.close('StableDifusionPipeline'); i.skip_reason('OnnxStableDiffusionPipeline')\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stderr


# ------------------------------------------------------------------------------------------- (d) skipped classes


def test_skipped_classes_carry_their_reason_and_are_not_indexed(shipped):
    for name, reason in shipped["skipped"].items():
        assert reason.startswith(("optional backend not installed: ", "import failed: ")), (name, reason)
        assert name not in shipped["pipelines"]
        assert index.skip_reason(name) == reason
    assert index.skip_reason("StableDiffusionPipeline") is None


def _fake_diffusers(tmp_path):
    """A module shaped like diffusers: one real pipeline, a dummy pipeline and a dummy scheduler for a missing
    backend, and an export whose import fails; the source tree says which names are pipelines."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.utils.import_utils import DummyObject

    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "fake.py").write_text(
        "class FakeBasePipeline(DiffusionPipeline):\n    pass\n\n"
        "class FakeOnnxPipeline(\n    FakeBasePipeline,\n):\n    pass\n\n"
        "class BrokenPipeline(DiffusionPipeline):\n    pass\n\n"
        "class FakeScheduler(SchedulerMixin):\n    pass\n"
    )

    class Fake(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("cannot import the thing\nsecond line")

    fake = Fake("fake_diffusers")
    fake.__file__ = str(tmp_path / "__init__.py")
    fake.DiffusionPipeline = diffusers.DiffusionPipeline
    fake.RealPipeline = type("RealPipeline", (diffusers.DiffusionPipeline,), {})
    fake.FakeOnnxPipeline = DummyObject("FakeOnnxPipeline", (), {"_backends": ["torch", "no_such_backend"]})
    fake.FakeScheduler = DummyObject("FakeScheduler", (), {"_backends": ["no_such_backend"]})
    fake.__all__ = ["DiffusionPipeline", "RealPipeline", "FakeOnnxPipeline", "FakeScheduler", "BrokenPipeline"]
    return fake


def test_dummy_pipelines_are_skipped_with_the_missing_backend_never_raised(tmp_path):
    classes, skipped = generate.exported_pipelines(_fake_diffusers(tmp_path))
    assert list(classes) == ["RealPipeline"]
    assert skipped == {
        "BrokenPipeline": "import failed: RuntimeError: cannot import the thing",
        "FakeOnnxPipeline": "optional backend not installed: no_such_backend (the class needs torch, no_such_backend)",
    }


# -------------------------------------------------- what diffusers really hooks, for every class with a chain


def _expected_alone(record, chain) -> set[str]:
    """The models diffusers hooks one by one beside `chain`: its pipeline's models neither chained nor excluded."""
    owned = record.components if chain.pipe is None else _part(record, chain.pipe).components.values()
    modules = set(record.models) | set(record.undetermined)  # stand-ins are modules for both
    return (set(owned) & modules) - set(chain.sequence) - set(chain.exclude)


def _part(record, attribute):
    return next(p for p in record.connected if p.attribute == attribute)


def _assert_hooks(owner, chain, alone: set[str], modules: dict) -> None:
    """`owner._all_hooks` holds `chain.sequence` first, each hook offloading the one before it, then `alone`,
    each unlinked; excluded modules carry no hook."""
    hooks = getattr(owner, "_all_hooks", [])
    names_by_id = {id(module): name for name, module in modules.items() if module is not None}
    names = [names_by_id[id(h.model)] for h in hooks]
    n = len(chain.sequence)
    assert names[:n] == list(chain.sequence)
    assert sorted(names[n:]) == sorted(alone)
    assert [h.hook.prev_module_hook for h in hooks] == [hooks[i - 1] if 0 < i < n else None for i in range(len(hooks))]
    assert not [name for name in chain.exclude if hasattr(modules[name], "_hf_hook")]


CHAINED = [name for name in index.names() if index.get(name).offload in ("chain", "connected")]


@pytest.mark.parametrize("name", CHAINED)
def test_the_index_says_what_enable_model_cpu_offload_hooks(name, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    record = index.get(name)
    cls = getattr(diffusers, name)
    stub = stub_type()
    modules = {n: stub() if c.model is not False else None for n, c in record.components.items()}
    if record.combined:
        pipe = combined_pipeline(cls, modules, diffusers.DiffusionPipeline, monkeypatch)
    else:
        pipe = bare_pipeline(cls, modules)
    pipe.enable_model_cpu_offload(device="cpu")
    for chain in record.chains:
        owner = pipe if chain.pipe is None else getattr(pipe, chain.pipe)
        _assert_hooks(owner, chain, _expected_alone(record, chain), modules)
    if record.offload == "connected":
        assert not getattr(pipe, "_all_hooks", []), "the combined class itself installs nothing"
