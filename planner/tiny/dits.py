"""The transformer (DiT / MMDiT) image families: SD3, FLUX.1, PixArt-Sigma, AuraFlow.

Shapes from diffusers' tests (tests/pipelines/stable_diffusion_3, flux, pixart_sigma, aura_flow), which fit their
32-wide CLIP and T5 encoders. Where a pipeline derives its default image size from the transformer's sample_size,
the size is kept small, so that a call with the pipeline's defaults stays well under a second on a CPU.
Each builder takes a scratch folder for tokenizer files and returns the pipeline, in float32.
"""

from __future__ import annotations

from pathlib import Path

from planner.tiny import assemble, encoders, tokenizers


def _vae_one_block(latent_channels: int):
    """diffusers' SD3/Flux test vae: one block of 4 channels, no quant convs, scale factor 1."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def sd3(scratch: Path):
    """StableDiffusion3Pipeline: two CLIPs with projection and a T5, an SD3Transformer2DModel; 16 px by default."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    clip = dict(projection=True, projection_dim=32, hidden_act="gelu")
    tokenizer = tokenizers.clip(scratch / "clip")
    return assemble(
        StableDiffusion3Pipeline, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae_one_block(4), text_encoder=encoders.clip_text(**clip), tokenizer=tokenizer,
        text_encoder_2=encoders.clip_text(**clip), tokenizer_2=tokenizer, text_encoder_3=encoders.t5(),
        tokenizer_3=tokenizers.t5(scratch / "t5"), image_encoder=None, feature_extractor=None)


def flux(scratch: Path):
    """FluxPipeline: a CLIP and a T5, a FluxTransformer2DModel with one double and one single block. The pipeline's
    default size is fixed (128 latent px times the vae's scale factor): 128 px here."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    return assemble(
        FluxPipeline, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae_one_block(1),
        text_encoder=encoders.clip_text(projection_dim=32, hidden_act="gelu"),
        tokenizer=tokenizers.clip(scratch / "clip"), text_encoder_2=encoders.t5(),
        tokenizer_2=tokenizers.t5(scratch / "t5"), image_encoder=None, feature_extractor=None)


def pixart_sigma(scratch: Path):
    """PixArtSigmaPipeline: a T5 and a PixArtTransformer2DModel. Its resolution binning (on by default) accepts a
    sample_size of 32 at the least (the 256 px bins); a four-block vae (scale factor 8) keeps that at 32 latent px."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(4, 4, 4, 4), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=1, sample_size=256)
    return assemble(PixArtSigmaPipeline, transformer=transformer.eval(), vae=vae.eval(), scheduler=DDIMScheduler(),
                    text_encoder=encoders.t5(), tokenizer=tokenizers.t5(scratch))


def auraflow(scratch: Path):
    """AuraFlowPipeline: a UMT5 and an AuraFlowTransformer2DModel (one MMDiT and one single-DiT layer); 64 px."""
    import torch
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    transformer = AuraFlowTransformer2DModel(sample_size=32, patch_size=2, in_channels=4, num_mmdit_layers=1,
                                             num_single_dit_layers=1, attention_head_dim=8, num_attention_heads=4,
                                             caption_projection_dim=32, joint_attention_dim=32, out_channels=4,
                                             pos_embed_max_size=256)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=32)
    return assemble(AuraFlowPipeline, transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                    text_encoder=encoders.t5(umt5=True), tokenizer=tokenizers.t5(scratch))
