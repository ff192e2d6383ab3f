import json

import pytest

pytest.importorskip("diffusers")


def test_tiny_pipelines_are_saved_and_load_back(tiny_pipelines):
    from diffusers import DiffusionPipeline

    classes = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
               "controlnet": "StableDiffusionControlNetPipeline"}
    for kind, folder in tiny_pipelines.items():
        assert json.loads((folder / "model_index.json").read_text())["_class_name"] == classes[kind]
        pipe = DiffusionPipeline.from_pretrained(folder)
        assert type(pipe).__name__ == classes[kind]
        assert pipe.tokenizer.model_max_length == 77


def test_build_is_seeded(tmp_path):
    import torch
    from diffusers import DiffusionPipeline

    from planner.executor import tiny

    a = DiffusionPipeline.from_pretrained(tiny.build("sd", tmp_path / "a"))
    b = DiffusionPipeline.from_pretrained(tiny.build("sd", tmp_path / "b"))
    assert all(torch.equal(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters(), strict=False))


def test_unknown_kind_is_refused(tmp_path):
    from planner.executor import tiny

    with pytest.raises(ValueError, match="unknown tiny pipeline"):
        tiny.build("flux", tmp_path)


def test_a_folder_holding_other_files_is_refused_and_left_as_it_was(tmp_path):
    from planner.executor import tiny

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
    from planner.executor import tiny

    folder = tiny.build("controlnet", tmp_path / "t")
    assert (folder / "controlnet").is_dir()
    tiny.build("sd", folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and tiny.built("sd", folder)
    assert not (folder / "controlnet").exists() and not (folder / "_tok").exists()  # nothing stale, no scratch


def test_a_previous_build_with_user_files_added_is_refused(tmp_path):
    from planner.executor import tiny

    folder = tiny.build("sd", tmp_path / "t")
    (folder / "notes.txt").write_text("mine")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(tiny.FolderInUse, match="holds a tiny build and other files \\(notes.txt\\)"):
        tiny.build("sdxl", folder)
    assert sorted(p.name for p in folder.iterdir()) == before and tiny.built("sd", folder)
    assert tiny.build("sd", folder) == folder  # the same kind is reused, user files and all


def test_the_same_kind_is_reused_without_rebuilding(tmp_path):
    from planner.executor import tiny

    folder = tiny.build("sd", tmp_path / "t")
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert tiny.build("sd", str(folder)) == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp


def test_an_empty_folder_and_an_interrupted_build_are_built_in(tmp_path):
    from planner.executor import tiny

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


def test_the_folder_check_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from planner.executor import tiny; print(tiny.folder_problem(sys.argv[1]), "
            "tiny.built('sd', sys.argv[1]), 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.stdout.split() == ["None", "False", "False"]


def test_planner_tiny_prints_where_it_built(tmp_path, capsys):
    from planner.cli import main

    assert main(["tiny", "sd", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert out == f"tiny sd pipeline in {tmp_path / 't'}\n" and err == ""  # no progress bars off a terminal
