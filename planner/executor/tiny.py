"""Tiny random-weight diffusers pipelines built from configs, seeded, saved with `save_pretrained`.

No hub access ever: the tokenizer is made from a byte-level vocab written here. Each pipeline runs a full call on
the CPU in well under a second, which is what the tests, the soak benchmark and the README's main command need.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

KINDS = ("sd", "sdxl", "controlnet")
MARKER = ".tiny-kind"  # "building" while a build runs, the kind once it is finished
BUILDING = "building"


class FolderInUse(ValueError):
    """The folder holds something a tiny build did not write; building there would overwrite it."""


def build(kind: str, folder: str | Path) -> Path:
    """Build the tiny pipeline `kind` (one of KINDS) and save it to `folder`; returns the folder.

    A folder that already holds a finished tiny build of this kind is reused as it is. A missing or empty
    folder, or a previous tiny build (of another kind, or interrupted) holding nothing else, is (re)built;
    anything else raises `FolderInUse` and is left untouched.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tiny pipeline {kind!r}: choose one of {', '.join(KINDS)}")
    folder = Path(folder)
    if built(kind, folder):
        return folder
    problem = folder_problem(folder)
    if problem:
        raise FolderInUse(problem)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():  # a previous tiny build and nothing else (checked above)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (folder / MARKER).write_text(BUILDING)  # first: an interrupted build is still recognised as ours
    with tempfile.TemporaryDirectory() as tokenizer_files:
        pipe = {"sd": _sd, "sdxl": _sdxl, "controlnet": _controlnet}[kind](Path(tokenizer_files))
        pipe.save_pretrained(folder)
    (folder / MARKER).write_text(kind)
    return folder


def built(kind: str, folder: str | Path) -> bool:
    """Whether `folder` holds a finished tiny build of `kind` (which `build` reuses)."""
    return _marker(Path(folder)) == kind and (Path(folder) / "model_index.json").is_file()


def folder_problem(folder: str | Path) -> str | None:
    """Why a tiny build must not be written to `folder`, or None: a missing or empty folder is fine, and so is a
    previous tiny build (any kind, or interrupted) holding nothing else. Imports no torch: the CLI asks first."""
    folder = Path(folder)
    try:
        if not folder.exists():
            return None
        if not folder.is_dir():
            return f"{str(folder)!r} is a file, not a folder"
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        return f"cannot read {str(folder)!r}: {exc.strerror or exc}"
    marker = _marker(folder)
    if not entries or marker == BUILDING:
        return None
    if marker is None:
        return (f"{str(folder)!r} is not empty and holds no tiny build ({_some(entries)}): building there would "
                "overwrite it")
    foreign = sorted(set(entries) - _build_entries(folder))
    if foreign:
        return f"{str(folder)!r} holds a tiny build and other files ({_some(foreign)}) that a rebuild would delete"
    return None


def _marker(folder: Path) -> str | None:
    """What the marker of a tiny build in `folder` says (a kind, or BUILDING), or None when there is none."""
    try:
        text = (folder / MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text in (*KINDS, BUILDING) else None


def _build_entries(folder: Path) -> set[str]:
    """What a finished tiny build holds: model_index.json, the marker, one folder per component it names."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    components = {name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)} \
        if isinstance(index, dict) else set()
    return {"model_index.json", MARKER, "_tok"} | components  # `_tok`: tokenizer files of older builds


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each byte, the alphabet of a byte-level BPE vocab."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _tokenizer(folder: Path):
    """A CLIP tokenizer over single bytes (no merges), loaded from files as a real one would be."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    tokens = ["<|startoftext|>", "<|endoftext|>", "!!"] + chars + [c + "</w>" for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "pad_token": "!!"}))
    return CLIPTokenizer.from_pretrained(str(folder))


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
                          **extra)


def _vae():
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=64)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _sd_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=4)


def _sd_parts(tokenizer_files: Path) -> dict:
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    return dict(vae=_vae(), text_encoder=CLIPTextModel(_text_config()), tokenizer=_tokenizer(tokenizer_files),
                unet=_sd_unet(), scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                image_encoder=None, requires_safety_checker=False)


def _sd(tokenizer_files: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**_sd_parts(tokenizer_files))


def _controlnet(tokenizer_files: Path):
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    torch.manual_seed(0)
    controlnet = ControlNetModel(block_out_channels=(8, 16), layers_per_block=1, in_channels=4,
                                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=32,
                                 attention_head_dim=4, norm_num_groups=4,
                                 conditioning_embedding_out_channels=(8, 16))
    return StableDiffusionControlNetPipeline(controlnet=controlnet, **_sd_parts(tokenizer_files))


def _sdxl(tokenizer_files: Path):
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=4)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(projection_dim=32))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=32))
    tokenizer = _tokenizer(tokenizer_files)
    return StableDiffusionXLPipeline(vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler(),
                                     image_encoder=None, feature_extractor=None, add_watermarker=False)
