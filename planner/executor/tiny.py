"""Tiny random-weight diffusers pipelines built from configs, seeded, saved with `save_pretrained`.

No hub access ever: the tokenizer is made from a byte-level vocab written here. Each pipeline runs a full call on
the CPU in well under a second, which is what the tests, the soak benchmark and the README's main command need.
"""

from __future__ import annotations

import json
from pathlib import Path

KINDS = ("sd", "sdxl", "controlnet")


def build(kind: str, folder: str | Path) -> Path:
    """Build the tiny pipeline `kind` (one of KINDS) and save it to `folder`; returns the folder.

    A folder that already holds a saved pipeline of this kind is reused as it is.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tiny pipeline {kind!r}: choose one of {', '.join(KINDS)}")
    folder = Path(folder)
    marker = folder / ".tiny-kind"
    if marker.exists() and marker.read_text() == kind and (folder / "model_index.json").exists():
        return folder
    pipe = {"sd": _sd, "sdxl": _sdxl, "controlnet": _controlnet}[kind](folder)
    pipe.save_pretrained(folder)
    marker.write_text(kind)
    return folder


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


def _sd_parts(folder: Path) -> dict:
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    return dict(vae=_vae(), text_encoder=CLIPTextModel(_text_config()), tokenizer=_tokenizer(folder / "_tok"),
                unet=_sd_unet(), scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                image_encoder=None, requires_safety_checker=False)


def _sd(folder: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**_sd_parts(folder))


def _controlnet(folder: Path):
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    torch.manual_seed(0)
    controlnet = ControlNetModel(block_out_channels=(8, 16), layers_per_block=1, in_channels=4,
                                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=32,
                                 attention_head_dim=4, norm_num_groups=4,
                                 conditioning_embedding_out_channels=(8, 16))
    return StableDiffusionControlNetPipeline(controlnet=controlnet, **_sd_parts(folder))


def _sdxl(folder: Path):
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
    tokenizer = _tokenizer(folder / "_tok")
    return StableDiffusionXLPipeline(vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler(),
                                     image_encoder=None, feature_extractor=None, add_watermarker=False)
