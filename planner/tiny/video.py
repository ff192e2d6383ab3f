"""The video families: Wan 2.1 (text-to-video, and image-to-video with its CLIP image encoder), CogVideoX, LTX-Video.

Shapes from diffusers' tests (tests/pipelines/wan, cogvideo, ltx). Wan and LTX-Video fix their default size in the
call's signature (480x832x81 and 512x704x161): call them with --height and --width (16 or 32 px is plenty).
CogVideoX derives its defaults from the transformer (16x16 px, 9 frames here). Each builder takes a scratch folder
for tokenizer files and returns the pipeline, in float32.
"""

from __future__ import annotations

from pathlib import Path

from planner.tiny import assemble, encoders, tokenizers

# diffusers' Wan tests' transformer; in_channels 16 (noise) or 36 (noise, the mask's 4 and the encoded condition)
WAN_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, out_channels=16,
                       text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                       qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _wan_parts(scratch: Path, **transformer) -> dict:
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    return dict(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder=encoders.t5(umt5=True),
                tokenizer=tokenizers.t5(scratch), transformer=WanTransformer3DModel(**WAN_TRANSFORMER, **transformer),
                transformer_2=None)


def wan_t2v(scratch: Path):
    """WanPipeline (Wan 2.1 text-to-video): a UMT5, one WanTransformer3DModel (transformer_2 None), the Wan vae."""
    from diffusers import WanPipeline

    return assemble(WanPipeline, **_wan_parts(scratch, in_channels=16))


def wan_i2v(scratch: Path):
    """WanImageToVideoPipeline (Wan 2.1 image-to-video): the text-to-video parts plus a CLIPVisionModel whose
    penultimate hidden states (width 4) the transformer takes as image embeddings."""
    from diffusers import WanImageToVideoPipeline

    image_encoder, image_processor = encoders.clip_vision(hidden_size=4, image_size=32)
    return assemble(WanImageToVideoPipeline, **_wan_parts(scratch, in_channels=36, image_dim=4),
                    image_encoder=image_encoder, image_processor=image_processor)


def cogvideox(scratch: Path):
    """CogVideoXPipeline: a T5, a one-layer CogVideoXTransformer3DModel (2x2 latent px, 9 frames by default: a
    16x16 px video), the CogVideoX vae with four blocks of 8 channels."""
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4,
                                              out_channels=4, time_embed_dim=2, text_embed_dim=32, num_layers=1,
                                              sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
                                              temporal_compression_ratio=4, max_text_seq_length=226)
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4)
    return assemble(CogVideoXPipeline, transformer=transformer, vae=vae, scheduler=CogVideoXDDIMScheduler(),
                    text_encoder=encoders.t5(), tokenizer=tokenizers.t5(scratch))


def ltx_video(scratch: Path):
    """LTXPipeline: a T5, a one-layer LTXVideoTransformer3DModel, the LTX vae with four blocks of 8 channels that
    compress as the real one does (patches of 4, three blocks halving space and time: 32x spatial, 8x temporal;
    diffusers' test compresses 4x both ways), so that the default 161 frames at 32x32 px make 21 latent frames of
    one latent pixel, and the CPU's slow float16/bfloat16 conv3d has little to decode."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel as Transformer

    torch.manual_seed(0)
    transformer = Transformer(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                              attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=32)
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, True, False),
                                decoder_spatio_temporal_scaling=(True, True, True, False),
                                decoder_inject_noise=(False, False, False, False, False),
                                upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
                                timestep_conditioning=False, patch_size=4, patch_size_t=1, encoder_causal=True,
                                decoder_causal=False)
    return assemble(LTXPipeline, transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                    text_encoder=encoders.t5(), tokenizer=tokenizers.t5(scratch))
