"""`planner inspect`'s table of a pipeline read from its folder. Its lines are bounded as the problems are
(`planner.folder.bounds`): one row per model component (at most MAX_COMPONENTS), names of at most MAX_NAME_CHARS, and
the lines of components without weights, not read and absent show LISTED names, then how many there are."""

from __future__ import annotations

from planner.blocknames import REST
from planner.folder.bounds import listed
from planner.folder.sizes import ModelSizes, human


def render_text(sizes: ModelSizes) -> str:
    """The `planner inspect` table: one line per model component (class, stored size and dtype, size as loaded,
    repeated blocks and the largest), a total, then the components without weights and the absent ones."""
    dtype = sizes.torch_dtype
    title = f"{sizes.class_name}  {sizes.source}" + (f"  variant {sizes.variant}" if sizes.variant else "")
    loaded = f"at {dtype}" if dtype else "loaded"
    rows = [("component", "class", "stored", "dtype", loaded, "blocks", "largest block")]
    for name, c in sizes.components.items():
        blocks = {b: n for b, n in c.blocks(dtype).items() if b != REST}
        largest = max(blocks.values(), default=0)
        rows.append((name + ("" if c.variant == sizes.variant else " (no variant)"), c.class_name, human(c.bytes),
                     c.dtype or "-", human(c.bytes_at(dtype)), str(len(blocks)), human(largest) if blocks else "-"))
    total = sizes.loaded_bytes()
    rows.append(("total", "", human(sum(c.bytes for c in sizes.components.values())), "",
                 human(sum(total.values())), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title, ""] + ["  ".join(cell.rjust(w) if i >= 2 else cell.ljust(w)
                                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                           for row in rows]
    if sizes.others:
        lines.append("without weights: " + listed([f"{n} ({cls})" for n, (_, cls) in sizes.others.items()]))
    if sizes.unread:
        lines.append("not read (see the problems): " + listed(sizes.unread))
    if sizes.absent:
        lines.append("absent: " + listed(sizes.absent))
    return "\n".join(lines) + "\n"
