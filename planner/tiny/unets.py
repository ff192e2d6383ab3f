"""The UNet families: Stable Diffusion 1.5, SDXL base and refiner, and ControlNet for both.

Shapes from diffusers' tests (tests/pipelines/stable_diffusion*, controlnet), channels scaled down to (8, 16) with
groups of 4: a two-block vae (64 px images from 32 px latents, the unet's sample_size), 32-wide CLIP encoders.
Each builder takes a scratch folder for tokenizer files and returns the pipeline, in float32.
"""

from __future__ import annotations

from pathlib import Path

from planner.tiny import assemble, encoders, tokenizers

UNET = dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=4)
# SDXL's unet: micro-conditioning on the pooled text embedding and the time ids (6 of 8 for the base, 5 with the
# refiner's aesthetic score), linear projections, two transformer layers in the second block.
SDXL_UNET = dict(UNET, attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, transformer_layers_per_block=(1, 2))
CONTROLNET = dict(block_out_channels=(8, 16), layers_per_block=1, in_channels=4, norm_num_groups=4,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  conditioning_embedding_out_channels=(8, 16))  # halves the control image, as the vae does


def vae():
    """A seeded two-block AutoencoderKL: 3 channels in and out, 4 latent channels, scale factor 2."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=64)


def _unet(**config):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**config)


def _controlnet(**config):
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    return ControlNetModel(**config)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


def _sd_parts(scratch: Path) -> dict:
    return dict(vae=vae(), text_encoder=encoders.clip_text(), tokenizer=tokenizers.clip(scratch),
                unet=_unet(**UNET, cross_attention_dim=32, attention_head_dim=4), scheduler=_scheduler(),
                safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def _sdxl_parts(scratch: Path) -> dict:
    tokenizer = tokenizers.clip(scratch)
    return dict(vae=vae(), text_encoder=encoders.clip_text(projection_dim=32), tokenizer=tokenizer,
                text_encoder_2=encoders.clip_text(projection=True, projection_dim=32), tokenizer_2=tokenizer,
                unet=_unet(**SDXL_UNET, cross_attention_dim=64, projection_class_embeddings_input_dim=80),
                scheduler=_sdxl_scheduler(), image_encoder=None, feature_extractor=None)


def sd(scratch: Path):
    from diffusers import StableDiffusionPipeline

    return assemble(StableDiffusionPipeline, **_sd_parts(scratch))


def controlnet(scratch: Path):
    from diffusers import StableDiffusionControlNetPipeline

    return assemble(
        StableDiffusionControlNetPipeline,
        controlnet=_controlnet(**CONTROLNET, cross_attention_dim=32, attention_head_dim=4), **_sd_parts(scratch))


def sdxl(scratch: Path):
    from diffusers import StableDiffusionXLPipeline

    return assemble(StableDiffusionXLPipeline, **_sdxl_parts(scratch), add_watermarker=False)


def controlnet_sdxl(scratch: Path):
    from diffusers import StableDiffusionXLControlNetPipeline

    controlnet = _controlnet(**CONTROLNET, attention_head_dim=(2, 4), use_linear_projection=True,
                             addition_embed_type="text_time", addition_time_embed_dim=8,
                             transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                             cross_attention_dim=64)
    return assemble(StableDiffusionXLControlNetPipeline, controlnet=controlnet, **_sdxl_parts(scratch),
                    add_watermarker=False)


def sdxl_refiner(scratch: Path):
    """The refiner as the hub ships it: no first text encoder (None), the aesthetic score among the time ids."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    return assemble(
        StableDiffusionXLImg2ImgPipeline, vae=vae(), text_encoder=None, tokenizer=None,
        text_encoder_2=encoders.clip_text(projection=True, projection_dim=32), tokenizer_2=tokenizers.clip(scratch),
        unet=_unet(**SDXL_UNET, cross_attention_dim=32, projection_class_embeddings_input_dim=72),
        scheduler=_sdxl_scheduler(), image_encoder=None, feature_extractor=None, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)
