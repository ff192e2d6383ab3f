"""Tokenizers written here and loaded from files as real ones are: no hub, no sentencepiece model.

diffusers' own tests load theirs from the hub (hf-internal-testing/tiny-random-*), which a machine offline cannot.
Each function writes the files a hub folder would hold into `folder` and loads them with the class the pipeline
expects; `save_pretrained` on the pipeline then writes them again into the build, where `from_pretrained` finds
them offline. Every vocab covers printable ASCII, so any English prompt tokenizes without unknowns.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

CLIP_MAX_LENGTH = 77  # the pipelines truncate and pad CLIP prompts to the tokenizer's model_max_length
T5_MAX_LENGTH = 512


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each byte, the alphabet of a byte-level BPE vocab."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def clip(folder: Path):
    """A CLIP tokenizer over single bytes (no merges): 515 tokens, bos 0, eos 1, pad 2, model_max_length 77."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    tokens = ["<|startoftext|>", "<|endoftext|>", "!!"] + chars + [c + "</w>" for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": CLIP_MAX_LENGTH, "pad_token": "!!"}))
    return CLIPTokenizer.from_pretrained(str(folder))


def t5(folder: Path):
    """A T5 tokenizer (a Unigram model over single characters, SentencePiece's word-start marker included): pad 0,
    eos 1, unk 2, 192 tokens, no sentinel tokens. Serves T5 and UMT5 encoders alike (both pipelines' tokenizers are
    T5's, and AutoTokenizer finds the class in tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                             special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": T5_MAX_LENGTH, "eos_token": "</s>",
        "pad_token": "<pad>", "unk_token": "<unk>", "extra_ids": 0, "additional_special_tokens": []}))
    return T5TokenizerFast.from_pretrained(str(folder))

