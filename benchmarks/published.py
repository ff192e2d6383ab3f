"""Real sizes of the plans library, from each model's published config (its config.json on the hub, the keys that
change shapes), built on the meta device with the installed diffusers and transformers: no weights, no network.

The hub is out of reach here, so every config and every check figure says where it is published (the hub repo and
file) and how its values were obtained (a GitHub copy of the file, the conversion script that wrote it, a mirror
of the hub repo with its Git LFS pointers). A model whose config could not be sourced is not built: its component
is listed in `PLANS[stem].unknown` (or the whole plan in `UNKNOWN_PLANS`) with the reason.

Sizes are what `planner.folder` reports for a real folder: the meta state dict becomes the `Tensor` list a
safetensors header would hold (each tied tensor once), read through `ComponentSizes.bytes_at` and `.blocks` at the
plan's `torch_dtype` (so transformers' float32 exceptions, T5's `wo` at float16, count as they load), and the blocks
are `planner.blocknames.block_of`'s, the same definition `planner inspect` uses. torch is imported here, never by
planner.

    from benchmarks import published        # or with benchmarks/ on sys.path: import published
    published.plan_sizes("sdxl-base")       # {"dtype": "float16", "components": {...}, "blocks": {...}, ...}
    published.check("sdxl-unet")            # [CheckResult(...)]: the model against its published figures
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent
PLANS_DIR = ROOT / "plans"
JSON_PATH = Path(__file__).resolve().parent / "published_sizes.json"

# torch dtype name -> safetensors dtype, for the tensors a meta model holds
_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


# --- records ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a config or figure is published (`where`: hub repo and file) and how its values were read here
    (`obtained`: the copy, script or mirror they came from)."""

    where: str
    obtained: str


@dataclass(frozen=True)
class Check:
    """A published figure the built model must match.

    kind: "file" (a safetensors file's length: tensor bytes at `stored` plus a header of 8 + JSON bytes, so the
    difference must be a plausible header), "index" (a shard index's `total_size`: tensor bytes at `stored`,
    exact), "tensors" (elements of every stored floating tensor, exact: what the hub's parameter count counts) or
    "parameters" (elements of the module's parameters, buffers excluded, exact: what `sum(p.numel())` prints)."""

    kind: str
    value: int
    source: Source
    stored: str | None = None  # safetensors dtype of the file or index ("F16", "BF16", "F32")


@dataclass(frozen=True)
class Model:
    """One model as a pipeline loads it: the library and class the repo's model_index.json names, its published
    config (shape keys), where that config comes from, and the figures that check the build."""

    library: str
    cls: str
    config: Mapping
    source: Source
    checks: tuple[Check, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class PlanModels:
    """The models behind one library plan: plan component -> model key; plan components the repository does not
    ship (None at load) with the reason; components whose config could not be sourced, with the reason; and
    models the pipeline loads outside the plan (excluded, or left to their own hook) -> (model key, why)."""

    components: Mapping[str, str]
    absent: Mapping[str, str] = field(default_factory=dict)
    unknown: Mapping[str, str] = field(default_factory=dict)
    others: Mapping[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """A model measured against one figure: what was measured, whether it matches, and a line saying so."""

    model: str
    check: Check
    measured: int
    ok: bool
    detail: str


# --- where the values come from --------------------------------------------------------------------------------

GH = "github "  # prefix of an `obtained` naming a GitHub repository and path
SD15_MIRROR = "HDRJ-One/runwayml-stable-diffusion-v1-5"  # a GitHub copy of runwayml/stable-diffusion-v1-5 (LFS)
SD15_NOTE = ("stable-diffusion-v1-5/stable-diffusion-v1-5 re-hosts runwayml/stable-diffusion-v1-5's files "
             "unchanged; the copy read here mirrors the runwayml repo with its Git LFS pointers (exact sizes)")
EXO = GH + "exo-explore/exo src/exo/shared/models/model_cards.py (image model cards: each component's index total)"
UNSLOTH = (GH + "unslothai/unsloth studio/frontend/src/components/assistant-ui/model-selector/model-catalog.ts "
           "(a version of the diffusion catalog with totalParams, 'what the Hub reports' for the repo)")
DIFFUSERS = GH + "huggingface/diffusers "  # the conversion scripts wrote these configs into the hub repos
COMFY = GH + "comfyanonymous/ComfyUI "
TAPROOT = GH + "painebenjamin/taproot "
SGM = GH + "Stability-AI/generative-models "
FINETRAINERS = GH + "a-r-r-o-w/finetrainers "


_src = Source  # shorter in the tables below


def _lfs(repo: str, path: str, hub: str) -> Source:
    return Source(hub, f"{GH}{repo} {path}: its Git LFS pointer gives the file's exact size")


# --- published configs (shape keys of each config.json, as the hub repo holds them) -----------------------------

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              projection_dim=768, hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77)
CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                  projection_dim=1280, hidden_act="gelu", vocab_size=49408, max_position_embeddings=77)
# OpenCLIP ViT-H/14 text tower as diffusers ships it for SD 2.x: 23 of its 24 layers (SD 2 reads the penultimate)
CLIP_H_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                   projection_dim=512, hidden_act="gelu", vocab_size=49408, max_position_embeddings=77)
CLIP_H_VISION = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                     patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu")
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, tie_word_embeddings=False)
UMT5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=256384,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False)
# google-t5/t5-11b: the original T5 (ReLU feed-forward), not v1.1
T5_11B = dict(d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128, vocab_size=32128,
              feed_forward_proj="relu", relative_attention_num_buckets=32, layer_norm_epsilon=1e-6)
GEMMA2_2B = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256)
QWEN25_VL_7B = dict(text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4),
                    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                       out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                                       temporal_patch_size=2),
                    tie_word_embeddings=False)
LLAVA_LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=128320, tie_word_embeddings=False)
SAFETY_CHECKER = dict(projection_dim=768,
                      text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
                      vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                         num_hidden_layers=24, patch_size=14))

SD15_UNET = dict(in_channels=4, out_channels=4, sample_size=64, layers_per_block=2, attention_head_dim=8,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, use_linear_projection=False)
SD21_UNET = dict(SD15_UNET, sample_size=96, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                 use_linear_projection=True)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                 attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32, act_fn="silu")
# sd_xl_refiner.yaml: model_channels 384 x channel_mult [1, 2, 4, 4]; attention_resolutions [4, 2] puts attention at
# the 2nd and 3rd levels; transformer_depth 4; context_dim 1280; adm_in_channels 2560 (pooled 1280 + 5 x 256)
SDXL_REFINER_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                         block_out_channels=(384, 768, 1536, 1536),
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                           "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                         transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24),
                         cross_attention_dim=1280, use_linear_projection=True, addition_embed_type="text_time",
                         addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
              norm_num_groups=32, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025)
SD3_VAE = dict(SD_VAE, sample_size=1024, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
               scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE = dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                  attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                  caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
SD35_LARGE = dict(SD3_MEDIUM, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                  qk_norm="rms_norm")
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
FLUX_SCHNELL = dict(FLUX_DEV, guidance_embeds=False)
FLUX_FILL = dict(FLUX_DEV, in_channels=384, out_channels=64)
PIXART_XL_1024 = dict(sample_size=128, num_layers=28, attention_head_dim=72, num_attention_heads=16,
                      in_channels=4, out_channels=8, patch_size=2, cross_attention_dim=1152,
                      num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                      norm_eps=1e-6, caption_channels=4096, attention_bias=True, activation_fn="gelu-approximate")
SANA_1600M_1024 = dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32,
                       num_layers=20, num_cross_attention_heads=20, cross_attention_head_dim=112,
                       cross_attention_dim=2240, caption_channels=2304, mlp_ratio=2.5, sample_size=32,
                       patch_size=1, interpolation_scale=None)
DC_AE_F32C32_SANA = dict(latent_channels=32, attention_head_dim=32,
                         encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                         decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                         encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                         decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                         encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                         decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                         encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                         downsample_block_type="conv", upsample_block_type="interpolate",
                         decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
LUMINA2 = dict(sample_size=128, patch_size=2, in_channels=16, hidden_size=2304, num_layers=26,
               num_refiner_layers=2, num_attention_heads=24, num_kv_heads=8, multiple_of=256,
               ffn_dim_multiplier=None, norm_eps=1e-5, axes_dim_rope=(32, 32, 32), axes_lens=(300, 512, 512),
               cap_feat_dim=2304)
HIDREAM_I1 = dict(patch_size=2, in_channels=16, out_channels=16, num_layers=16, num_single_layers=32,
                  attention_head_dim=128, num_attention_heads=20, caption_channels=(4096, 4096), text_emb_dim=2048,
                  num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(64, 32, 32),
                  max_resolution=(128, 128), llama_layers=tuple(range(32)) + (31,) * 16)
QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))
WAN_VAE: dict = {}  # the conversion script writes AutoencoderKLWan()'s own defaults
WAN_T2V_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, added_kv_proj_dim=None)
WAN_I2V_14B = dict(WAN_T2V_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
HUNYUANVIDEO = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                    qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                    rope_theta=256.0, rope_axes_dim=(16, 56, 56))
HUNYUANVIDEO_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, norm_num_groups=32,
                        block_out_channels=(128, 256, 512, 512), mid_block_add_attention=True,
                        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                        up_block_types=("HunyuanVideoUpBlock3D",) * 4, spatial_compression_ratio=8,
                        temporal_compression_ratio=4, scaling_factor=0.476986)
LTX_VIDEO = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                 attention_head_dim=64, cross_attention_dim=2048, num_layers=28, activation_fn="gelu-approximate",
                 qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096,
                 attention_bias=True, attention_out_bias=True)
COGVIDEOX_5B = dict(activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, in_channels=16,
                    max_text_seq_length=226, num_attention_heads=48, num_layers=42, out_channels=16, patch_size=2,
                    sample_frames=49, sample_height=60, sample_width=90, text_embed_dim=4096, time_embed_dim=512,
                    use_rotary_positional_embeddings=True)
COGVIDEOX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=3, norm_eps=1e-6,
                     norm_num_groups=32, block_out_channels=(128, 256, 256, 512),
                     down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
                     temporal_compression_ratio=4, use_quant_conv=False, use_post_quant_conv=False,
                     scaling_factor=0.7)
MOCHI = dict(patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=48, pooled_projection_dim=1536,
             in_channels=12, qk_norm="rms_norm", text_embed_dim=4096, time_embed_dim=256, activation_fn="swiglu",
             max_sequence_length=256)
MOCHI_VAE = dict(in_channels=15, out_channels=3, latent_channels=12, encoder_block_out_channels=(64, 128, 256, 384),
                 decoder_block_out_channels=(128, 256, 512, 768), layers_per_block=(3, 3, 4, 6, 3),
                 temporal_expansions=(1, 2, 3), spatial_expansions=(2, 2, 2),
                 add_attention_block=(False, True, True, True, True), act_fn="silu", scaling_factor=1.0)
HUNYUANIMAGE_21 = dict(in_channels=64, out_channels=64, num_attention_heads=28, attention_head_dim=128, num_layers=20,
                       num_single_layers=40, num_refiner_layers=2, patch_size=(1, 1), qk_norm="rms_norm",
                       guidance_embeds=False, text_embed_dim=3584, text_embed_2_dim=1472, rope_theta=256.0,
                       rope_axes_dim=(64, 64))
HUNYUANIMAGE_21_VAE = dict(in_channels=3, out_channels=3, latent_channels=64,
                           block_out_channels=(128, 256, 512, 512, 1024, 1024), layers_per_block=2,
                           spatial_compression_ratio=32, sample_size=384, scaling_factor=0.75289,
                           downsample_match_channel=True, upsample_match_channel=True)
COSMOS2_2B_T2I = dict(in_channels=16, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
                      mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240),
                      patch_size=(1, 2, 2), rope_scale=(1.0, 4.0, 4.0), concat_padding_mask=True,
                      extra_pos_embed_type=None)
# svd.yaml: model_channels 320 x [1, 2, 4, 4], attention at the first three levels, 64-channel heads, context 1024,
# adm_in_channels 768 (3 x 256); img2vid-xt makes 25 frames
SVD_XT_UNET = dict(in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                   num_attention_heads=(5, 10, 20, 20), cross_attention_dim=1024, layers_per_block=2,
                   transformer_layers_per_block=1, projection_class_embeddings_input_dim=768,
                   addition_time_embed_dim=256, num_frames=25)
SVD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
               block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4)


# --- the models ------------------------------------------------------------------------------------------------

_CLIP_L_SRC = _src("openai/clip-vit-large-patch14 config.json, copied into each pipeline's text_encoder/config.json "
                   "(stable-diffusion-v1-5, stable-diffusion-xl-base-1.0, FLUX.1-dev, HunyuanVideo)",
                   f"{GH}{SD15_MIRROR} text_encoder/config.json; the same keys in {TAPROOT}"
                   "src/taproot/pretrained/text_encoder/clip.py (CLIPViTLTextEncoder)")
_BIG_G_SRC = _src("stabilityai/stable-diffusion-xl-base-1.0 text_encoder_2/config.json",
                  f"{GH}PRITHIVSAKTHIUR/AI-Art-Generator-SDXL text_encoder_2/config.json (an SDXL-derived repo "
                  f"with SDXL's encoders); the same keys in {TAPROOT}src/taproot/pretrained/text_encoder/open_clip.py")
_T5_SRC = _src("google/t5-v1_1-xxl config.json, copied into each pipeline's T5 folder (FLUX.1-dev text_encoder_2, "
               "stable-diffusion-3-medium-diffusers text_encoder_3, PixArt, CogVideoX, LTX-Video, Mochi)",
               f"{TAPROOT}src/taproot/pretrained/text_encoder/t5.py (T5XXLTextEncoder); "
               f"{COMFY}comfy/t5_config_xxl.json")

MODELS: dict[str, Model] = {
    # text encoders
    "clip-vit-l": Model("transformers", "CLIPTextModel", CLIP_L, _CLIP_L_SRC, (
        Check("file", 492_265_168, _lfs(SD15_MIRROR, "text_encoder/model.fp16.safetensors",
                                        "runwayml/stable-diffusion-v1-5 text_encoder/model.fp16.safetensors as "
                                        "mirrored: its length is that of float32 tensors"), "F32"),
        Check("file", 246_144_152, _lfs("PRITHIVSAKTHIUR/AI-Art-Generator-SDXL", "text_encoder/model.fp16.safetensors",
                                        "an SDXL repo's text_encoder/model.fp16.safetensors"), "F16"),
        Check("file", 246_144_352, _lfs("allenshore989/FLUX.1-schnell", "text_encoder/model.safetensors",
                                        "black-forest-labs/FLUX.1-schnell text_encoder/model.safetensors"), "BF16"),
    )),
    "clip-vit-l-projection": Model(
        "transformers", "CLIPTextModelWithProjection", CLIP_L,
        _src("stabilityai/stable-diffusion-3-medium-diffusers text_encoder/config.json",
             f"{TAPROOT}src/taproot/pretrained/text_encoder/clip.py (CLIPViTLTextEncoderWithProjection: "
             "CLIP ViT-L's config, with its text projection)"),
        note="no published figure found; it is clip-vit-l plus its 768 x 768 projection"),
    "clip-vit-bigg-projection": Model("transformers", "CLIPTextModelWithProjection", CLIP_BIG_G, _BIG_G_SRC, (
        Check("file", 1_389_382_176, _lfs("PRITHIVSAKTHIUR/AI-Art-Generator-SDXL",
                                          "text_encoder_2/model.fp16.safetensors",
                                          "an SDXL repo's text_encoder_2/model.fp16.safetensors"), "F16"),
    )),
    "clip-vit-h-text": Model("transformers", "CLIPTextModel", CLIP_H_TEXT, _src(
        "stabilityai/stable-diffusion-2-1 text_encoder/config.json",
        f"{GH}jack-op11/stable-diffusion-2-1-base text_encoder/config.json (the 2.1-base copy: the same text "
        f"encoder); {GH}Teiboku/std2-inpaint text_encoder/config.json (SD 2 inpainting: the same keys)"), (
        Check("file", 680_821_096, _lfs("Teiboku/std2-inpaint", "text_encoder/model.fp16.safetensors",
                                        "stabilityai/stable-diffusion-2-inpainting text_encoder/model.fp16"
                                        ".safetensors (the same SD 2 text encoder)"), "F16"),
    )),
    "clip-vit-h-vision": Model("transformers", "CLIPVisionModel", CLIP_H_VISION, _src(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K vision config, copied into Wan2.1-I2V-14B-480P-Diffusers "
        "image_encoder/config.json (diffusers' convert_wan_to_diffusers.py loads it from laion)",
        f"{TAPROOT}src/taproot/pretrained/vision_encoder/open_clip.py (OpenCLIPViTHVisionEncoder)"),
        note="no published figure found"),
    "clip-vit-h-vision-projection": Model("transformers", "CLIPVisionModelWithProjection", CLIP_H_VISION, _src(
        "stabilityai/stable-video-diffusion-img2vid-xt image_encoder/config.json (OpenCLIP ViT-H/14)",
        f"{TAPROOT}src/taproot/pretrained/vision_encoder/open_clip.py (OpenCLIPViTHVisionEncoder)"),
        note="no published figure found"),
    "t5-v1.1-xxl": Model("transformers", "T5EncoderModel", T5_XXL, _T5_SRC, (
        Check("index", 9_524_621_312, _src("black-forest-labs/FLUX.1-dev text_encoder_2/model.safetensors.index.json "
                                           "total_size", EXO), "BF16"),
        Check("index", 19_049_242_624, _src(
            "genmo/mochi-1-preview text_encoder/model.safetensors.index.json total_size",
            "quoted in a public Mochi integration report found by exact-number search of GitHub (the index does "
            "not name its repository)"), "F32"),
    ), note="the input embedding is tied to shared.weight and stored once"),
    "umt5-xxl": Model("transformers", "UMT5EncoderModel", UMT5_XXL, _src(
        "google/umt5-xxl config.json, copied into Wan2.1 / Wan2.2 / SkyReels-V2 text_encoder/config.json "
        "(diffusers' convert_wan_to_diffusers.py loads google/umt5-xxl)",
        f"{COMFY}comfy/text_encoders/umt5_config_xxl.json"), (
        Check("tensors", 5_680_910_336, _src(
            "Wan-AI/Wan2.2-T2V-A14B-Diffusers text_encoder (the hub's parameter count)",
            "asserted in a public Wan 2.2 evidence script found by exact-number search of GitHub "
            "(the index does not name its repository)")),
    )),
    "t5-11b": Model("transformers", "T5EncoderModel", T5_11B, _src(
        "google-t5/t5-11b config.json, copied into nvidia/Cosmos-Predict2-2B-Text2Image text_encoder/config.json "
        "(diffusers' convert_cosmos_to_diffusers.py passes --text_encoder_path google-t5/t5-11b)",
        f"{COMFY}comfy/text_encoders/t5_old_config_xxl.json"), note="no published figure found"),
    "gemma-2-2b": Model("transformers", "Gemma2Model", GEMMA2_2B, _src(
        "google/gemma-2-2b(-it) config.json, copied into Sana_1600M_1024px_BF16_diffusers and Lumina-Image-2.0 "
        "text_encoder/config.json", f"{COMFY}comfy/text_encoders/llama.py (Gemma2_2B_Config)"), (
        Check("tensors", 2_614_341_888, _src(
            "google/gemma-2-2b (the hub's parameter count)",
            "reported by many public GitHub files found by exact-number search (model catalogs, GGUF listings)")),
    )),
    "qwen2.5-vl-7b": Model("transformers", "Qwen2_5_VLForConditionalGeneration", QWEN25_VL_7B, _src(
        "Qwen/Qwen2.5-VL-7B-Instruct config.json, copied into Qwen/Qwen-Image text_encoder/config.json",
        f"{COMFY}comfy/text_encoders/llama.py (Qwen25_7BVLI_Config; the vision tower built as "
        "Qwen2VLVisionTransformer(hidden_size=1280, output_hidden_size=3584)) and comfy/text_encoders/qwen_vl.py "
        "(that tower's defaults: 32 blocks, 16 heads, MLP 3420, patch 14)"), (
        Check("index", 16_584_333_312, _src("Qwen/Qwen-Image text_encoder: its tensors' bytes (the shard index's "
                                            "total_size)", EXO + "; the Qwen-Image card's text_encoder entry"),
              "BF16"),
    )),
    "llava-llama-3-8b-text": Model("transformers", "LlamaModel", LLAVA_LLAMA3_8B, _src(
        "hunyuanvideo-community/HunyuanVideo text_encoder/config.json (the language model of "
        "xtuner/llava-llama-3-8b-v1_1-transformers)",
        f"{TAPROOT}src/taproot/pretrained/text_encoder/llama.py (LlavaLlamaTextEncoder)"),
        note="no published figure found"),
    "sd-safety-checker": Model("transformers", "StableDiffusionSafetyChecker", SAFETY_CHECKER, _src(
        "CompVis/stable-diffusion-safety-checker config.json, copied into stable-diffusion-v1-5 "
        "safety_checker/config.json", f"{GH}{SD15_MIRROR} safety_checker/config.json"), (
        Check("file", 608_018_440, _lfs(SD15_MIRROR, "safety_checker/pytorch_model.fp16.safetensors",
                                        "runwayml/stable-diffusion-v1-5 safety_checker/model.fp16.safetensors "
                                        "(mirrored under another name)"),
              "F16"),
    )),
    # denoisers
    "sd15-unet": Model("diffusers", "UNet2DConditionModel", SD15_UNET, _src(
        "runwayml/stable-diffusion-v1-5 unet/config.json", f"{GH}{SD15_MIRROR} unet/config.json"), (
        Check("file", 1_719_125_304, _lfs(SD15_MIRROR, "unet/diffusion_pytorch_model.fp16.safetensors",
                                          "runwayml/stable-diffusion-v1-5 unet/diffusion_pytorch_model.fp16"
                                          ".safetensors"), "F16"),
    ), note=SD15_NOTE),
    "sd21-unet": Model("diffusers", "UNet2DConditionModel", SD21_UNET, _src(
        "stabilityai/stable-diffusion-2-1 unet/config.json",
        f"{GH}Vikas-2025/Hugging_face_sta_dif_2.1 unet/config.json (a copy of the 2-1 repo, Flax class name, "
        "same keys)"), (
        Check("file", 3_463_726_498, _lfs("jack-op11/stable-diffusion-2-1-base",
                                          "unet/diffusion_pytorch_model.safetensors",
                                          "stabilityai/stable-diffusion-2-1-base unet/diffusion_pytorch_model"
                                          ".safetensors (2-1-base: the same unet at sample_size 64)"), "F32"),
    )),
    "sdxl-unet": Model("diffusers", "UNet2DConditionModel", SDXL_UNET, _src(
        "stabilityai/stable-diffusion-xl-base-1.0 unet/config.json",
        f"{GH}PRITHIVSAKTHIUR/AI-Art-Generator-SDXL unet/config.json (an SDXL-derived repo); the same keys in "
        f"{TAPROOT}"
        "src/taproot/tasks/generation/image/sdxl/pretrained/unet.py"), (
        Check("file", 5_135_149_760, _lfs("andrewcchoi/stabilityai-stable-diffusion-xl-base-1.0",
                                          "unet/diffusion_pytorch_model.fp16.safetensors",
                                          "stabilityai/stable-diffusion-xl-base-1.0 unet/diffusion_pytorch_model"
                                          ".fp16.safetensors"), "F16"),
        Check("tensors", 2_567_463_684, _src("stabilityai/stable-diffusion-xl-base-1.0 (the hub's parameter count)",
                                             UNSLOTH)),
    )),
    "sdxl-refiner-unet": Model("diffusers", "UNet2DConditionModel", SDXL_REFINER_UNET, _src(
        "stabilityai/stable-diffusion-xl-refiner-1.0 unet/config.json",
        f"derived from the authors' {SGM}configs/inference/sd_xl_refiner.yaml network_config as diffusers' "
        "create_unet_diffusers_config_from_ldm maps it (no copy of the hub config.json was in reach)"),
        note="no published figure found"),
    "sd3-medium-transformer": Model("diffusers", "SD3Transformer2DModel", SD3_MEDIUM, _src(
        "stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json",
        f"{TAPROOT}src/taproot/tasks/generation/image/sd3/pretrained/transformer.py (StableDiffusion3Transformer)"), (
        Check("parameters", 2_028_328_000, _src(
            "stabilityai/stable-diffusion-3-medium-diffusers transformer, loaded (nn.Parameters: the 56.6 M "
            "element pos_embed buffer not included)",
            "printed in public logs of tools loading the hub model, found by exact-number search of GitHub")),
    )),
    "sd3.5-large-transformer": Model("diffusers", "SD3Transformer2DModel", SD35_LARGE, _src(
        "stabilityai/stable-diffusion-3.5-large transformer/config.json",
        f"{TAPROOT}src/taproot/tasks/generation/image/sd3/pretrained/transformer.py "
        "(StableDiffusion35LargeTransformer)"), note="no published figure found"),
    "flux.1-dev-transformer": Model("diffusers", "FluxTransformer2DModel", FLUX_DEV, _src(
        "black-forest-labs/FLUX.1-dev transformer/config.json (FLUX.1-Kontext-dev: the same keys)",
        f"{TAPROOT}src/taproot/tasks/generation/image/flux/pretrained/transformer.py; "
        f"{GH}black-forest-labs/flux src/flux/util.py (flux-dev FluxParams)"), (
        Check("index", 23_802_816_640, _src("black-forest-labs/FLUX.1-dev transformer/diffusion_pytorch_model"
                                            ".safetensors.index.json total_size", EXO), "BF16"),
        Check("tensors", 11_901_408_320, _src("black-forest-labs/FLUX.1-dev and FLUX.1-Kontext-dev (the hub's "
                                              "parameter count)", UNSLOTH)),
    )),
    "flux.1-schnell-transformer": Model("diffusers", "FluxTransformer2DModel", FLUX_SCHNELL, _src(
        "black-forest-labs/FLUX.1-schnell transformer/config.json (guidance_embeds false)",
        f"{TAPROOT}src/taproot/tasks/generation/image/flux/pretrained/transformer.py (FluxSchnellTransformer); "
        f"{GH}black-forest-labs/flux src/flux/util.py (flux-schnell: guidance_embed=False)"), (
        Check("index", 23_782_357_120, _src("black-forest-labs/FLUX.1-schnell transformer/diffusion_pytorch_model"
                                            ".safetensors.index.json total_size", EXO), "BF16"),
        Check("tensors", 11_891_178_560, _src("black-forest-labs/FLUX.1-schnell (the hub's parameter count)",
                                              UNSLOTH)),
    )),
    "flux.1-fill-transformer": Model("diffusers", "FluxTransformer2DModel", FLUX_FILL, _src(
        "black-forest-labs/FLUX.1-Fill-dev transformer/config.json (in_channels 384: image, masked image and "
        "mask latents packed; out_channels 64)",
        f"FLUX.1-dev's config with the input width diffusers' {DIFFUSERS}src/diffusers/loaders/"
        "single_file_utils.py detects Fill by (x_embedder input 384 -> 'flux-fill', "
        "black-forest-labs/FLUX.1-Fill-dev)"), note="no published figure found"),
    "pixart-xl-2-1024-transformer": Model("diffusers", "PixArtTransformer2DModel", PIXART_XL_1024, _src(
        "PixArt-alpha/PixArt-XL-2-1024-MS and PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer/config.json",
        f"{DIFFUSERS}scripts/convert_pixart_alpha_to_diffusers.py and convert_pixart_sigma_to_diffusers.py "
        "(the conversion that wrote them, image_size 1024)"), note="no published figure found"),
    "sana-1600m-1024-transformer": Model("diffusers", "SanaTransformer2DModel", SANA_1600M_1024, _src(
        "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers transformer/config.json",
        f"{DIFFUSERS}scripts/convert_sana_to_diffusers.py (SanaMS_1600M_P1_D20, image_size 1024, no qk_norm)"),
        note="no published figure found"),
    "lumina-image-2-transformer": Model("diffusers", "Lumina2Transformer2DModel", LUMINA2, _src(
        "Alpha-VLLM/Lumina-Image-2.0 transformer/config.json",
        f"{GH}sgl-project/sglang python/sglang/multimodal_gen/configs/models/dits/lumina2.py (read off the "
        "published config.json)"), (
        Check("tensors", 2_609_769_152, _src("Alpha-VLLM/Lumina-Image-2.0 (the hub's parameter count)", UNSLOTH)),
    )),
    "hidream-i1-transformer": Model("diffusers", "HiDreamImageTransformer2DModel", HIDREAM_I1, _src(
        "HiDream-ai/HiDream-I1-Full transformer/config.json",
        "an early copy of that config.json (class then named HiImageTransformer2DModel) in a public HiDream "
        "conversion script found by exact search of GitHub"), (
        Check("tensors", 17_105_733_184, _src("HiDream-ai/HiDream-I1-Full (the hub's parameter count)", UNSLOTH)),
    )),
    "qwen-image-transformer": Model("diffusers", "QwenImageTransformer2DModel", QWEN_IMAGE, _src(
        "Qwen/Qwen-Image transformer/config.json (Qwen-Image-Edit: the same keys)",
        f"{DIFFUSERS}src/diffusers/models/transformers/transformer_qwenimage.py: the class's defaults, added "
        "with the model; no copy of the hub file was in reach, the exact published counts below confirm it"), (
        Check("index", 40_860_802_176, _src("Qwen/Qwen-Image transformer/diffusion_pytorch_model.safetensors"
                                            ".index.json total_size", EXO), "BF16"),
        Check("tensors", 20_430_401_088, _src("Qwen/Qwen-Image (the hub's parameter count)", UNSLOTH)),
    )),
    "wan2.1-t2v-14b-transformer": Model("diffusers", "WanTransformer3DModel", WAN_T2V_14B, _src(
        "Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json (each Wan2.2-T2V-A14B expert: the same keys)",
        f"{DIFFUSERS}scripts/convert_wan_to_diffusers.py (Wan-T2V-14B, Wan2.2-T2V-A14B)"), (
        Check("tensors", 14_288_491_584, _src("Wan-AI/Wan2.2-T2V-A14B-Diffusers (the hub's parameter count, per "
                                              "expert; the same architecture as Wan2.1-T2V-14B)", UNSLOTH)),
    )),
    "wan2.1-i2v-14b-transformer": Model("diffusers", "WanTransformer3DModel", WAN_I2V_14B, _src(
        "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json",
        f"{DIFFUSERS}scripts/convert_wan_to_diffusers.py (Wan-I2V-14B-480p)"), note="no published figure found"),
    "hunyuanvideo-transformer": Model("diffusers", "HunyuanVideoTransformer3DModel", HUNYUANVIDEO, _src(
        "hunyuanvideo-community/HunyuanVideo transformer/config.json",
        f"{DIFFUSERS}scripts/convert_hunyuan_video_to_diffusers.py (TRANSFORMER_CONFIGS HYVideo-T/2-cfgdistill); "
        f"the same keys in {TAPROOT}src/taproot/tasks/generation/video/hunyuan/pretrained/transformer.py"),
        note="no published figure found"),
    "ltx-video-transformer": Model("diffusers", "LTXVideoTransformer3DModel", LTX_VIDEO, _src(
        "Lightricks/LTX-Video transformer/config.json",
        f"{DIFFUSERS}scripts/convert_ltx_to_diffusers.py (versions before 0.9.7); the same keys in {TAPROOT}"
        "src/taproot/tasks/generation/video/ltx/pretrained/transformer.py"), (
        Check("parameters", 1_923_385_472, _src(
            "Lightricks/LTX-Video transformer, loaded for full finetuning (trainable parameters)",
            FINETRAINERS + "docs/training/ltx_video.md, its 'Full Finetuning' section")),
    )),
    "cogvideox-5b-transformer": Model("diffusers", "CogVideoXTransformer3DModel", COGVIDEOX_5B, _src(
        "THUDM/CogVideoX-5b transformer/config.json",
        f"{TAPROOT}src/taproot/tasks/generation/video/cog/pretrained/transformer.py (CogVideoXTransformer5B)"), (
        Check("parameters", 5_570_283_072, _src(
            "THUDM/CogVideoX-5b transformer, loaded for full finetuning (trainable parameters)",
            FINETRAINERS + "docs/training/cogvideox.md, its 'Full finetuning' section")),
    )),
    "mochi-1-transformer": Model("diffusers", "MochiTransformer3DModel", MOCHI, _src(
        "genmo/mochi-1-preview transformer/config.json",
        f"{TAPROOT}src/taproot/tasks/generation/video/mochi/pretrained/transformer.py (MochiTransformer)"), (
        Check("index", 20_055_355_488, _src(
            "genmo/mochi-1-preview transformer/diffusion_pytorch_model.safetensors.index.bf16.json total_size",
            "quoted in a public Mochi integration report found by exact-number search of GitHub (the index does "
            "not name its repository)"), "BF16"),
    )),
    "hunyuanimage-2.1-transformer": Model("diffusers", "HunyuanImageTransformer2DModel", HUNYUANIMAGE_21, _src(
        "hunyuanvideo-community/HunyuanImage-2.1-Diffusers transformer/config.json",
        f"{DIFFUSERS}scripts/convert_hunyuan_image_to_diffusers.py (hunyuanimage2.1)"), (
        Check("tensors", 17_425_795_520, _src("hunyuanvideo-community/HunyuanImage-2.1-Diffusers (the hub's "
                                              "parameter count)", UNSLOTH)),
    )),
    "hunyuanimage-2.1-vae": Model("diffusers", "AutoencoderKLHunyuanImage", HUNYUANIMAGE_21_VAE, _src(
        "hunyuanvideo-community/HunyuanImage-2.1-Diffusers vae/config.json",
        f"{DIFFUSERS}scripts/convert_hunyuan_image_to_diffusers.py (hunyuanimage2.1)"),
        note="no published figure found"),
    "cosmos-predict2-2b-transformer": Model("diffusers", "CosmosTransformer3DModel", COSMOS2_2B_T2I, _src(
        "nvidia/Cosmos-Predict2-2B-Text2Image transformer/config.json",
        f"{DIFFUSERS}scripts/convert_cosmos_to_diffusers.py (Cosmos-2.0-Diffusion-2B-Text2Image)"),
        note="no published figure found"),
    "svd-xt-unet": Model("diffusers", "UNetSpatioTemporalConditionModel", SVD_XT_UNET, _src(
        "stabilityai/stable-video-diffusion-img2vid-xt unet/config.json",
        f"derived from the authors' {SGM}configs/inference/svd.yaml network_config (the values diffusers' "
        "convert_svd_to_diffusers.py maps), 25 frames for -xt"), (
        Check("file", 3_049_435_868, _lfs("gipsyking5/stable-video-diffusion-img2vid-xt",
                                          "unet/diffusion_pytorch_model.fp16.safetensors",
                                          "stabilityai/stable-video-diffusion-img2vid-xt unet/diffusion_pytorch_model"
                                          ".fp16.safetensors"), "F16"),
    )),
    # autoencoders
    "sd-vae": Model("diffusers", "AutoencoderKL", SD_VAE, _src(
        "runwayml/stable-diffusion-v1-5 vae/config.json (SD 2.1's and PixArt-alpha's vae: the same keys)",
        f"{GH}{SD15_MIRROR} vae/config.json"), (
        Check("file", 167_335_342, _lfs(SD15_MIRROR, "vae/diffusion_pytorch_model.fp16.safetensors",
                                        "runwayml/stable-diffusion-v1-5 vae/diffusion_pytorch_model.fp16"
                                        ".safetensors"), "F16"),
    )),
    "sdxl-vae": Model("diffusers", "AutoencoderKL", SDXL_VAE, _src(
        "stabilityai/stable-diffusion-xl-base-1.0 vae/config.json (the refiner's and PixArt-Sigma's: the same "
        "keys)", f"{TAPROOT}src/taproot/tasks/generation/image/sdxl/pretrained/vae.py"), (
        Check("file", 167_335_342, _lfs("andrewcchoi/stabilityai-stable-diffusion-xl-base-1.0",
                                        "vae/diffusion_pytorch_model.fp16.safetensors",
                                        "stabilityai/stable-diffusion-xl-base-1.0 vae/diffusion_pytorch_model.fp16"
                                        ".safetensors"), "F16"),
    )),
    "sd3-vae": Model("diffusers", "AutoencoderKL", SD3_VAE, _src(
        "stabilityai/stable-diffusion-3-medium-diffusers vae/config.json (3.5-large: the same keys)",
        f"{TAPROOT}src/taproot/tasks/generation/image/sd3/pretrained/vae.py"),
        note="no published figure found; the same shapes as flux-vae"),
    "flux-vae": Model("diffusers", "AutoencoderKL", FLUX_VAE, _src(
        "black-forest-labs/FLUX.1-dev vae/config.json (schnell, Kontext, Fill, Lumina-Image-2.0, HiDream-I1: the "
        "FLUX.1 autoencoder)", f"{TAPROOT}src/taproot/tasks/generation/image/flux/pretrained/vae.py; "
        f"{GH}black-forest-labs/flux src/flux/util.py (AutoEncoderParams z_channels 16)"), (
        Check("tensors", 83_819_683, _src("black-forest-labs/FLUX.1-dev vae (its tensors' elements)",
                                          "stated in a public tensor-validator note found by exact-number search of "
                                          "GitHub ('244 tensors, 83819683 values')")),
    )),
    "dc-ae-f32c32-sana": Model("diffusers", "AutoencoderDC", DC_AE_F32C32_SANA, _src(
        "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers config.json, copied into "
        "Sana_1600M_1024px_BF16_diffusers vae/config.json",
        f"{DIFFUSERS}scripts/convert_dcae_to_diffusers.py (dc-ae-f32c32-sana-1.0)"), note="no published figure found"),
    "qwen-image-vae": Model("diffusers", "AutoencoderKLQwenImage", {}, _src(
        "Qwen/Qwen-Image vae/config.json",
        f"{DIFFUSERS}src/diffusers/models/autoencoders/autoencoder_kl_qwenimage.py: the class's defaults, added "
        "with the model"), note="no published figure found: the defaults are not confirmed against the hub file"),
    "wan-vae": Model("diffusers", "AutoencoderKLWan", WAN_VAE, _src(
        "Wan-AI/Wan2.1-T2V-14B-Diffusers vae/config.json (every Wan 2.1 / Wan2.2-A14B repo; Cosmos-Predict2 copies "
        "Wan2.1-T2V-1.3B-Diffusers' vae)",
        f"{DIFFUSERS}scripts/convert_wan_to_diffusers.py convert_vae(): AutoencoderKLWan() with its defaults"),
        note="no published figure found"),
    "hunyuanvideo-vae": Model("diffusers", "AutoencoderKLHunyuanVideo", HUNYUANVIDEO_VAE, _src(
        "hunyuanvideo-community/HunyuanVideo vae/config.json",
        f"{TAPROOT}src/taproot/tasks/generation/video/hunyuan/pretrained/vae.py (HunyuanVideoVAE)"),
        note="no published figure found"),
    "cogvideox-5b-vae": Model("diffusers", "AutoencoderKLCogVideoX", COGVIDEOX_VAE, _src(
        "THUDM/CogVideoX-5b vae/config.json",
        f"{TAPROOT}src/taproot/tasks/generation/video/cog/pretrained/vae.py (CogVideoXVAE5B)"),
        note="no published figure found"),
    "mochi-1-vae": Model("diffusers", "AutoencoderKLMochi", MOCHI_VAE, _src(
        "genmo/mochi-1-preview vae/config.json",
        f"{TAPROOT}src/taproot/tasks/generation/video/mochi/pretrained/vae.py (MochiVAE)"),
        note="no published figure found"),
    "svd-temporal-vae": Model("diffusers", "AutoencoderKLTemporalDecoder", SVD_VAE, _src(
        "stabilityai/stable-video-diffusion-img2vid-xt vae/config.json",
        f"derived from the authors' {SGM}configs/inference/svd.yaml first_stage_config (ch 128 x [1, 2, 4, 4], "
        "2 res blocks, z 4; video_kernel_size [3, 1, 1] in the decoder)"), note="no published figure found"),
}


# --- the library ---------------------------------------------------------------------------------------------

IP_ADAPTER = "IP-Adapter only: the repository ships none (null in model_index.json), apply skips it"
TRANSFORMER_2 = "Wan 2.2's second expert: Wan 2.1 ships none (null), apply skips it"
SAFETY = ("excluded: the class moves it to the device whole and keeps it there (runwayml's "
          "CompVis/stable-diffusion-safety-checker)")
CONTROLNET = ("own_hook in the plan (diffusers hooks it apart from the chain); not in the base repository, and "
              "the config of the repo the plan's comment names was not in reach")
LTX_VAE = ("the repository's vae: the diffusers conversion knows a 0.9.0 and a 0.9.1 config (the latter's decoder "
           "is 2.2 times larger) and no copy of Lightricks/LTX-Video vae/config.json was in reach to tell which")

_SD15 = {"text_encoder": "clip-vit-l", "unet": "sd15-unet", "vae": "sd-vae"}
_SDXL = {"text_encoder": "clip-vit-l", "text_encoder_2": "clip-vit-bigg-projection", "unet": "sdxl-unet",
         "vae": "sdxl-vae"}
_SD3 = {"text_encoder": "clip-vit-l-projection", "text_encoder_2": "clip-vit-bigg-projection",
        "text_encoder_3": "t5-v1.1-xxl", "vae": "sd3-vae"}
_FLUX = {"text_encoder": "clip-vit-l", "text_encoder_2": "t5-v1.1-xxl", "vae": "flux-vae"}
_PIXART = {"text_encoder": "t5-v1.1-xxl", "transformer": "pixart-xl-2-1024-transformer"}

PLANS: dict[str, PlanModels] = {
    "stable-diffusion-1.5": PlanModels(_SD15, {"image_encoder": IP_ADAPTER},
                                       others={"safety_checker": ("sd-safety-checker", SAFETY)}),
    "controlnet-sd-1.5": PlanModels(_SD15, {"image_encoder": IP_ADAPTER}, {"controlnet": CONTROLNET},
                                    others={"safety_checker": ("sd-safety-checker", SAFETY)}),
    "stable-diffusion-2.1": PlanModels({"text_encoder": "clip-vit-h-text", "unet": "sd21-unet", "vae": "sd-vae"},
                                       {"image_encoder": IP_ADAPTER}),
    "sdxl-base": PlanModels(_SDXL, {"image_encoder": IP_ADAPTER}),
    "controlnet-sdxl": PlanModels(_SDXL, {"image_encoder": IP_ADAPTER}, {"controlnet": CONTROLNET}),
    "sdxl-refiner": PlanModels({"text_encoder_2": "clip-vit-bigg-projection", "unet": "sdxl-refiner-unet",
                                "vae": "sdxl-vae"},
                               {"text_encoder": "the refiner ships no CLIP ViT-L (null in model_index.json)",
                                "image_encoder": IP_ADAPTER}),
    "sd3-medium": PlanModels({**_SD3, "transformer": "sd3-medium-transformer"}, {"image_encoder": IP_ADAPTER}),
    "sd3.5-large": PlanModels({**_SD3, "transformer": "sd3.5-large-transformer"}, {"image_encoder": IP_ADAPTER}),
    "flux.1-dev": PlanModels({**_FLUX, "transformer": "flux.1-dev-transformer"}, {"image_encoder": IP_ADAPTER}),
    "flux.1-schnell": PlanModels({**_FLUX, "transformer": "flux.1-schnell-transformer"},
                                 {"image_encoder": IP_ADAPTER}),
    "flux.1-kontext-dev": PlanModels({**_FLUX, "transformer": "flux.1-dev-transformer"},
                                     {"image_encoder": IP_ADAPTER}),
    "flux.1-fill-dev": PlanModels({**_FLUX, "transformer": "flux.1-fill-transformer"}),
    "pixart-alpha": PlanModels({**_PIXART, "vae": "sd-vae"}),
    "pixart-sigma": PlanModels({**_PIXART, "vae": "sdxl-vae"}),
    "sana": PlanModels({"text_encoder": "gemma-2-2b", "transformer": "sana-1600m-1024-transformer",
                        "vae": "dc-ae-f32c32-sana"}),
    "lumina-2": PlanModels({"text_encoder": "gemma-2-2b", "transformer": "lumina-image-2-transformer",
                            "vae": "flux-vae"}),
    "hidream-i1": PlanModels({"text_encoder_3": "t5-v1.1-xxl", "transformer": "hidream-i1-transformer",
                              "vae": "flux-vae"}, unknown={
        "text_encoder": "HiDream-I1-Full's CLIP ViT-L config (its position-embedding length) was not in reach",
        "text_encoder_2": "HiDream-I1-Full's CLIP ViT-bigG config (its position-embedding length) was not in reach",
        "text_encoder_4": "Llama 3.1 8B Instruct, passed in from meta-llama's repo: no copy of its config was read"}),
    "qwen-image": PlanModels({"text_encoder": "qwen2.5-vl-7b", "transformer": "qwen-image-transformer",
                              "vae": "qwen-image-vae"}),
    "qwen-image-edit": PlanModels({"text_encoder": "qwen2.5-vl-7b", "transformer": "qwen-image-transformer",
                                   "vae": "qwen-image-vae"}),
    "wan-2.1-t2v-14b": PlanModels({"text_encoder": "umt5-xxl", "transformer": "wan2.1-t2v-14b-transformer",
                                   "vae": "wan-vae"}, {"transformer_2": TRANSFORMER_2}),
    "wan-2.1-i2v-14b-480p": PlanModels({"text_encoder": "umt5-xxl", "image_encoder": "clip-vit-h-vision",
                                        "transformer": "wan2.1-i2v-14b-transformer", "vae": "wan-vae"},
                                       {"transformer_2": TRANSFORMER_2}),
    "wan-2.2-t2v-a14b": PlanModels({"text_encoder": "umt5-xxl", "transformer": "wan2.1-t2v-14b-transformer",
                                    "transformer_2": "wan2.1-t2v-14b-transformer", "vae": "wan-vae"}),
    "hunyuanvideo": PlanModels({"text_encoder": "llava-llama-3-8b-text", "text_encoder_2": "clip-vit-l",
                                "transformer": "hunyuanvideo-transformer", "vae": "hunyuanvideo-vae"}),
    "ltx-video": PlanModels({"text_encoder": "t5-v1.1-xxl", "transformer": "ltx-video-transformer"},
                            unknown={"vae": LTX_VAE}),
    "cogvideox-5b": PlanModels({"text_encoder": "t5-v1.1-xxl", "transformer": "cogvideox-5b-transformer",
                                "vae": "cogvideox-5b-vae"}),
    "mochi-1": PlanModels({"text_encoder": "t5-v1.1-xxl", "transformer": "mochi-1-transformer",
                           "vae": "mochi-1-vae"}),
    "hunyuanimage-2.1": PlanModels(
        {"text_encoder": "qwen2.5-vl-7b", "transformer": "hunyuanimage-2.1-transformer",
         "vae": "hunyuanimage-2.1-vae"},
        unknown={"text_encoder_2": "the ByT5 glyph encoder: its config (a vocabulary extended with font and colour "
                                   "tokens) was not in reach"}),
    "cosmos-predict2-2b-text2image": PlanModels(
        {"text_encoder": "t5-11b", "transformer": "cosmos-predict2-2b-transformer", "vae": "wan-vae"},
        unknown={"safety_checker": "own_hook in the plan: a CosmosSafetyChecker from the cosmos_guardrail package, "
                                   "not built here"}),
    "stable-video-diffusion-xt": PlanModels({"image_encoder": "clip-vit-h-vision-projection", "unet": "svd-xt-unet",
                                             "vae": "svd-temporal-vae"}),
}

# Plans whose configs could not be sourced honestly here: no sizes, only the reason.
UNKNOWN_PLANS: dict[str, str] = {
    "allegro": "AllegroTransformer3DModel and AutoencoderKLAllegro: no copy of rhymes-ai/Allegro's configs in reach",
    "auraflow": "fal/AuraFlow-v0.3 transformer: copies disagree on pos_embed_max_size (1024 or 9216, 28 M "
                "elements apart) and no published figure tells which",
    "chroma": "lodestones/Chroma1-HD transformer: no copy of its config.json in reach",
    "cogview4": "THUDM/CogView4-6B: GLM-4 encoder and transformer configs not in reach (the conversion script's "
                "transformer arguments differ from the class defaults)",
    "flux.2-dev": "black-forest-labs/FLUX.2-dev: Mistral Small 3.1 encoder, transformer and vae configs not in reach",
    "hunyuandit": "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers transformer config (v1.2 vs v1.1 meta-size "
                  "conditioning) not in reach",
    "kandinsky-3": "kandinsky-community/kandinsky-3: Flan-UL2 encoder, unet and MoVQ configs not in reach (the "
                   "conversion script builds the unet from an empty config)",
    "latte-1": "maxin-cn/Latte-1 transformer config not in reach",
    "skyreels-v2-t2v-14b-720p": "Skywork/SkyReels-V2-T2V-14B-720P-Diffusers transformer config not in reach",
}


# --- building ----------------------------------------------------------------------------------------------------


@functools.cache
def build(key: str):
    """The model `key` on the meta device, from its published config (T5-style embeddings tied, as they load)."""
    import torch

    model = MODELS[key]
    with torch.device("meta"):
        module = _construct(model)
    if hasattr(module, "tie_weights"):
        module.tie_weights()  # built from a config on meta, a tied embedding is tied only after this (DESIGN.md)
    return module.eval()


def _construct(model: Model):
    if model.cls == "StableDiffusionSafetyChecker":
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig

        return StableDiffusionSafetyChecker(CLIPConfig(**model.config))
    cls = getattr(importlib.import_module(model.library), model.cls)
    if model.library == "transformers":
        return cls(cls.config_class(**model.config))
    return cls(**model.config)


@functools.cache
def tensors(key: str):
    """The tensors `save_pretrained` would store for model `key`, as `planner.folder.sizes.Tensor`s: its state dict,
    each tensor once under its first name (a tied tensor is stored once), at the dtype it was built in."""
    from planner.folder.sizes import Tensor

    seen, out = set(), []
    for name, tensor in build(key).state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        dtype = _ST_DTYPES[str(tensor.dtype).removeprefix("torch.")]
        out.append(Tensor(name, dtype, tuple(tensor.shape), tensor.numel() * tensor.element_size()))
    return tuple(out)


def component(name: str, key: str):
    """Model `key` as the `planner.folder.sizes.ComponentSizes` a folder holding it would give for component `name`."""
    from planner.folder.sizes import ComponentSizes

    model = MODELS[key]
    return ComponentSizes(name, model.library, model.cls, (), tensors(key))


def plan_dtype(stem: str) -> str | None:
    """The plan's `pipeline.torch_dtype`, read by the planner's own loader."""
    import planner

    return planner.load_plan(PLANS_DIR / f"{stem}.yaml").torch_dtype


def plan_sizes(stem: str) -> dict:
    """The sizes of library plan `stem` at its torch_dtype: {"dtype", "components": {name: bytes}, "blocks":
    {name: {block: bytes}}, "absent": {name: why}, "unknown": {name: why}, "others": {name: {"bytes", "why"}}},
    components in the plan's order. A plan in UNKNOWN_PLANS has no sizes, only its reason under "unknown"."""
    dtype = plan_dtype(stem)
    if stem in UNKNOWN_PLANS:
        return {"dtype": dtype, "components": {}, "blocks": {}, "absent": {}, "unknown": {"*": UNKNOWN_PLANS[stem]},
                "others": {}}
    models = PLANS[stem]
    order = _plan_order(stem)
    comps = {name: component(name, models.components[name]) for name in order if name in models.components}
    return {"dtype": dtype,
            "components": {name: c.bytes_at(dtype) for name, c in comps.items()},
            "blocks": {name: c.blocks(dtype) for name, c in comps.items()},
            "absent": dict(models.absent), "unknown": dict(models.unknown),
            "others": {name: {"bytes": component(name, key).bytes_at(dtype), "why": why}
                       for name, (key, why) in models.others.items()}}


def _plan_order(stem: str) -> tuple[str, ...]:
    """The plan's components in its resolved sequence."""
    import planner

    return planner.load_plan(PLANS_DIR / f"{stem}.yaml").sequence


def library_stems() -> list[str]:
    """Every library plan (plans/*.yaml, not the examples), by file name."""
    return sorted(p.stem for p in PLANS_DIR.glob("*.yaml"))


def compute_all() -> dict:
    """{plan stem: plan_sizes(stem)} for every library plan: what benchmarks/published_sizes.json holds."""
    return {stem: plan_sizes(stem) for stem in library_stems()}


# --- checking against the published figures -------------------------------------------------------------------


def check(key: str) -> list[CheckResult]:
    """Model `key` measured against each of its published figures."""
    return [verify(key, c) for c in MODELS[key].checks]


def verify(key: str, c: Check) -> CheckResult:
    """Model `key` measured against figure `c` (which need not be one of its own)."""
    stored = tensors(key)
    floats = [t for t in stored if t.dtype in _ST_BYTES]
    if c.kind == "tensors":
        measured = sum(t.numel for t in floats)
        return CheckResult(key, c, measured, measured == c.value, f"{measured:,} elements, published {c.value:,}")
    if c.kind == "parameters":
        measured = sum(p.numel() for p in build(key).parameters())  # parameters() yields a tied tensor once
        return CheckResult(key, c, measured, measured == c.value, f"{measured:,} parameters, published {c.value:,}")
    measured = sum(t.numel * _ST_BYTES[c.stored] if t.dtype in _ST_BYTES else t.nbytes for t in stored)
    if c.kind == "index":
        return CheckResult(key, c, measured, measured == c.value, f"{measured:,} B at {c.stored}, total_size "
                           f"{c.value:,}")
    if c.kind == "file":
        header = c.value - measured
        bound = header_bound(stored)
        return CheckResult(key, c, measured, 8 < header <= bound, f"{measured:,} B of tensors at {c.stored}, file "
                           f"{c.value:,}: header {header:,} B (a header of these names is at most {bound:,})")
    raise ValueError(f"unknown check kind {c.kind!r}")


def header_bound(stored) -> int:
    """The most a safetensors header for these tensors can take: 8 length bytes, and per tensor its name and an
    entry of at most 100 bytes (dtype, a shape of up to five dimensions, two offsets of up to 12 digits), plus a
    metadata entry. A missing or extra tensor of more than this many bytes cannot hide in it."""
    return 8 + sum(len(t.name) + 100 for t in stored) + 1024


def check_all() -> list[CheckResult]:
    return [result for key in MODELS for result in check(key)]
