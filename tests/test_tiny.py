"""planner.tiny: tiny random-weight builds of the library's families, saved as their plans load them, offline."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from planner import tiny

# The families issue 7 asks a tiny build for (at least), by library plan.
REQUIRED_PLANS = {"stable-diffusion-1.5", "sdxl-base", "sd3-medium", "flux.1-dev", "flux.1-schnell", "pixart-sigma",
                  "wan-2.1-i2v-14b-480p", "cogvideox-5b", "controlnet-sd-1.5", "controlnet-sdxl"}
SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


def header_dtypes(path) -> set[str]:
    """The dtypes a safetensors file's header declares (its JSON header only)."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


# -- the registry against the library ----------------------------------------------------------------------------
def test_every_family_the_issue_names_has_a_tiny_build():
    served = {plan for kind in tiny.KINDS.values() for plan in kind.plans}
    assert REQUIRED_PLANS <= served
    assert {"sd", "sdxl", "controlnet"} <= set(tiny.KINDS)  # the original kind names still work


@pytest.mark.parametrize("name", sorted(tiny.KINDS))
def test_each_kind_matches_the_plans_it_is_made_for(name):
    from planner.validate import load_plan

    kind = tiny.KINDS[name]
    for plan_name in kind.plans:
        plan = load_plan(ROOT / "plans" / f"{plan_name}.yaml")
        assert (plan.pipeline_class, plan.torch_dtype, plan.variant) == (kind.pipeline, kind.torch_dtype,
                                                                        kind.variant), plan_name


# -- the builds ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(tiny.KINDS))
def test_each_build_is_saved_with_its_plans_variant_and_dtype(name, tiny_builds):
    kind, folder = tiny.KINDS[name], tiny_builds[name]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == kind.pipeline
    weights = [p for p in folder.glob("*/*.safetensors")]
    assert weights and sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 4 * 2**20
    wanted = SAFETENSORS_DTYPES[kind.torch_dtype or "float32"]
    for component in {p.parent for p in weights}:
        files = sorted(p.name for p in component.glob("*.safetensors"))
        if kind.variant:  # the hub's layout: float32 files and the variant's, side by side
            assert len(files) == 2 and any(f.endswith(f".{kind.variant}.safetensors") for f in files), files
            assert header_dtypes(component / files[0].replace(f".{kind.variant}", "")) == {"F32"}
        variant_file = next(component / f for f in files if kind.variant is None or f".{kind.variant}." in f)
        # mostly in the plan's dtype; some classes keep a few modules in float32 (Wan's norms, T5's `wo` in fp16)
        assert wanted in header_dtypes(variant_file) <= {wanted, "F32"}, variant_file


@pytest.fixture
def no_network(monkeypatch):
    """The hub switched off, and any attempt at a connection fails loudly."""
    import socket

    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", sorted(tiny.KINDS))
def test_each_build_loads_offline_as_its_plans_load_it(name, tiny_builds, no_network):
    """Offline: the build loads with its plans' variant and torch_dtype, its models in that dtype, its tokenizers
    whole (offline, transformers can hand back an empty tokenizer instead of failing)."""
    import torch
    from diffusers import DiffusionPipeline

    kind, folder = tiny.KINDS[name], tiny_builds[name]
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=getattr(torch, kind.torch_dtype or "float32"),
                                             variant=kind.variant)
    assert type(pipe).__name__ == kind.pipeline
    models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    assert models and {str(m.dtype) for m in models} == {f"torch.{kind.torch_dtype or 'float32'}"}
    tokenizers = [t for n, t in pipe.components.items() if n.startswith("tokenizer") and t is not None]
    assert tokenizers
    for tokenizer in tokenizers:
        ids = tokenizer("a cat").input_ids
        assert len(tokenizer) > 100 and tokenizer.model_max_length in (77, 512)
        assert len(ids) >= 5 and tokenizer.unk_token_id not in ids[1:-1]  # CLIP's unknown is its end token


def test_build_is_seeded(tmp_path):
    import torch
    from diffusers import DiffusionPipeline

    a = DiffusionPipeline.from_pretrained(tiny.build("sd", tmp_path / "a"))
    b = DiffusionPipeline.from_pretrained(tiny.build("sd", tmp_path / "b"))
    assert all(torch.equal(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters(), strict=True))


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny pipeline 'flux2': choose one of sd, sdxl, controlnet, "):
        tiny.build("flux2", tmp_path)
    assert not tmp_path.joinpath(tiny.MARKER).exists()


def test_a_family_newer_than_the_installed_diffusers_is_refused_before_any_change(tmp_path, monkeypatch, capsys):
    from planner.cli import main

    monkeypatch.setitem(tiny.KINDS, "future", tiny.Kind("FuturePipeline", "unets:sd", ()))
    with pytest.raises(tiny.Unavailable, match="tiny future needs a diffusers with FuturePipeline; diffusers "):
        tiny.build("future", tmp_path / "f")
    assert not (tmp_path / "f").exists()
    with pytest.raises(SystemExit) as exited:
        main(["tiny", "future", str(tmp_path / "f")])
    assert exited.value.code == 2
    assert "planner tiny: error: tiny future needs a diffusers with FuturePipeline" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


# -- the folder rules --------------------------------------------------------------------------------------------
def test_a_folder_holding_other_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"mine")
    with pytest.raises(tiny.FolderInUse, match="is not empty and holds no tiny build \\(cat.jpg\\)"):
        tiny.build("sd", tmp_path / "photos")
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cat.jpg"]
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(tiny.FolderInUse, match="is a file, not a folder"):
        tiny.build("sd", tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "mine"


def test_a_previous_build_of_another_kind_is_replaced_whole(tmp_path):
    folder = tiny.build("controlnet", tmp_path / "t")
    assert (folder / "controlnet").is_dir()
    tiny.build("sd", folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and tiny.built("sd", folder)
    assert not (folder / "controlnet").exists() and not (folder / "_tok").exists()  # nothing stale, no scratch


def test_a_previous_build_with_user_files_added_is_refused(tmp_path):
    folder = tiny.build("sd", tmp_path / "t")
    (folder / "notes.txt").write_text("mine")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(tiny.FolderInUse, match="holds a tiny build and other files \\(notes.txt\\)"):
        tiny.build("sdxl", folder)
    assert sorted(p.name for p in folder.iterdir()) == before and tiny.built("sd", folder)
    assert tiny.build("sd", folder) == folder  # the same kind is reused, user files and all


def test_the_same_kind_is_reused_without_rebuilding(tmp_path):
    folder = tiny.build("sd", tmp_path / "t")
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert tiny.build("sd", str(folder)) == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp


def test_an_empty_folder_and_an_interrupted_build_are_built_in(tmp_path):
    (tmp_path / "empty").mkdir()
    assert tiny.folder_problem(tmp_path / "empty") is None
    tiny.build("sd", tmp_path / "empty")
    assert tiny.built("sd", tmp_path / "empty")
    interrupted = tmp_path / "interrupted"
    (interrupted / "unet").mkdir(parents=True)
    (interrupted / tiny.MARKER).write_text(tiny.BUILDING)  # what a build killed half-way leaves
    assert tiny.folder_problem(interrupted) is None and not tiny.built("sd", interrupted)
    tiny.build("sd", interrupted)
    assert tiny.built("sd", interrupted)


def test_the_registry_and_the_folder_check_import_no_torch(tmp_path):
    code = ("import sys; from planner import tiny; print(tiny.folder_problem(sys.argv[1]), "
            "tiny.built('sd', sys.argv[1]), len(tiny.KINDS) > 3, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.stdout.split() == ["None", "False", "True", "False"], proc.stderr


# -- planner tiny ----------------------------------------------------------------------------------------------
def test_planner_tiny_prints_where_it_built(tmp_path, capsys):
    from planner.cli import main

    assert main(["tiny", "sd", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert out == f"tiny sd pipeline in {tmp_path / 't'}\n" and err == ""  # no progress bars off a terminal


def test_planner_tiny_says_what_a_call_of_a_build_needs(tmp_path, capsys):
    from planner.cli import main

    assert main(["tiny", "sdxl-refiner", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    folder = tmp_path / "r"
    assert out.splitlines() == [f"tiny sdxl-refiner pipeline in {folder}",
                                f"call it with: planner apply plans/sdxl-refiner.yaml --source {folder} --dry-run "
                                "--image IMAGE --steps 4 (IMAGE: the image to refine)"]
    assert err == ""
    assert tiny.KINDS["wan-i2v"].hint() == "--image IMAGE --height 16 --width 16"
