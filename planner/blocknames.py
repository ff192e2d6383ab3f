"""The block vocabulary both sides speak: which repeated block a tensor belongs to, REST, and the blocks' order.

Pure (no imports beyond the standard library). The folder reader sizes blocks with it from safetensors names, the
executor groups a module's tensors with it, so `planner inspect` and `planner apply` name the same blocks.
"""

from __future__ import annotations

REST = "rest"  # the block holding every tensor outside the repeated blocks


def block_of(name: str) -> str:
    """The repeated block a tensor belongs to: its name up to the first index that follows a name
    (`down_blocks.0`, `text_model.encoder.layers.5`, `encoder.block.7`, `single_transformer_blocks.3`), or up to a
    single `*_block` module met before any index (`mid_block`, `decoder.mid_block`); REST otherwise."""
    parts = name.split(".")
    if _is_index(parts[0]) and len(parts) > 1:
        return parts[0]
    for i in range(len(parts) - 1):
        if _is_index(parts[i + 1]):
            return ".".join(parts[:i + 2])
        if parts[i].endswith("_block"):
            return ".".join(parts[:i + 1])
    return REST


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()


def block_order(block: str) -> list:
    """The sort key of a block name: its indices as numbers (`blocks.10` after `blocks.9`), names as text."""
    return [(0, int(p), "") if _is_index(p) else (1, 0, p) for p in block.split(".")]


def piece_of(name: str, splits: frozenset[str] | set[str] = frozenset()) -> str:
    """The piece a tensor belongs to when the pieces in `splits` are split (blocks inside blocks): its block
    (`block_of`), and while that piece is split, the piece below it: the relative name's repeated block
    (`up_blocks.0` -> `up_blocks.0.attentions.0`), else its first submodule (`...transformer_blocks.0.attn1`); a
    tensor directly in a split piece (`...norm.weight` with `...norm` split) belongs to REST. With no splits, the
    same as `block_of`."""
    piece = block_of(name)
    while piece != REST and piece in splits:
        relative = name[len(piece) + 1:]
        inner = block_of(relative)
        if inner == REST:
            head, dot, _ = relative.partition(".")
            if not dot:
                return REST
            inner = head
        piece = f"{piece}.{inner}"
    return piece
