"""Tiny text and image encoders, built from configs the way diffusers' tests build theirs (seeded, random weights).

The T5 and UMT5 shapes are hf-internal-testing/tiny-random-t5's (d_model 32, 4 heads of 8, d_ff 37), which the
tests' transformers are sized for (text_dim, caption_channels, joint_attention_dim 32); two layers instead of five.
Every vocab is 1000 rows, more than any tokenizer of `tokenizers.py` hands out.
"""

from __future__ import annotations

VOCAB = 1000


def clip_text_config(**extra):
    """diffusers' tiny CLIP text config (hidden 32, 4 heads, 2 layers), `extra` on top; ids match `tokenizers.clip`."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{**dict(bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_size=32,
                                    intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                                    num_hidden_layers=2, vocab_size=VOCAB), **extra})


def clip_text(projection: bool = False, **extra):
    """A seeded CLIPTextModel, or CLIPTextModelWithProjection (SDXL's second encoder, SD3's first two)."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(clip_text_config(**extra))


def t5(umt5: bool = False):
    """A seeded T5EncoderModel (or UMT5EncoderModel: Wan, AuraFlow) of tiny-random-t5's width, in eval mode (a model
    built from a config trains, and T5's dropout would make calls differ)."""
    import torch
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config, model = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    torch.manual_seed(0)
    return model(config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                        decoder_start_token_id=0)).eval()


def clip_vision(hidden_size: int = 4, image_size: int = 32):
    """A seeded CLIPVisionModel (Wan 2.1 image-to-video's image encoder), diffusers' Wan test shapes."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=hidden_size, projection_dim=hidden_size,
                                             num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                                             intermediate_size=16, patch_size=1))
    return model, CLIPImageProcessor(crop_size=image_size, size=image_size)
