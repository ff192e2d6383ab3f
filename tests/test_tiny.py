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
