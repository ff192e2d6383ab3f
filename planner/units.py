"""Sizes in bytes, as plans and the command line write them: `8GiB`, `512 MB`, `6.5GB`, `1073741824`.

One grammar, shared by `parse_size` and the plan schema's `size` pattern (`SIZE_PATTERN`), so the schema and
`planner validate` accept exactly the same strings:

- an integer of bytes (`1073741824`; a YAML integer or a string of digits), or
- a decimal number (digits, optionally a fraction: `6.5`) then at most one space then a unit, spelled exactly:
  `B`; decimal `KB` `MB` `GB` `TB` (powers of 1000); binary `KiB` `MiB` `GiB` `TiB` (powers of 1024).

Refused, each with a message that says what to write: negative numbers, floats and exponents (`1e9`, `8.0`
without a unit: they hide rounding), other spellings of the units (`gb`, `Gb`, `G`, `GIB`: `Mb` reads as
megabits), booleans. A fraction is rounded down to whole bytes: a budget is an upper bound, rounding down never
lets it be exceeded.
"""

from __future__ import annotations

import re

UNITS: dict[str, int] = {
    "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
}

# ECMA-262 (the schema) and Python's `re.fullmatch` read this pattern the same way: ASCII digits and a literal
# space only, and anchors that the schema needs (Python's `$` would allow a final newline: fullmatch does not).
_UNIT = "|".join(UNITS)
SIZE_PATTERN = rf"^(?:[0-9]+|[0-9]+(?:\.[0-9]+)? ?(?:{_UNIT}))$"  # the schema's `$defs.size.pattern` (a test)
_SIZE = re.compile(rf"([0-9]+(?:\.[0-9]+)?)(?: ?({_UNIT}))?")  # fullmatch; no unit: digits only (parse_size)

ACCEPTED = ("a whole number of bytes (1073741824) or a number and a unit: B, KB, MB, GB, TB (powers of 1000), "
            "KiB, MiB, GiB, TiB (powers of 1024), e.g. 8GiB, 512 MB, 6.5GB")


def parse_size(value: object) -> int:
    """Bytes from an int >= 0 or a size string (the module's grammar), rounded down to whole bytes.

    Raises ValueError naming the value, what it most likely meant (`suggest`) and what is accepted (`ACCEPTED`)
    for anything else: a bool, a float, a negative number, an exponent, a unit spelled another way.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return _bounded(value, value)
    if isinstance(value, str) and len(value) > MAX_TEXT:  # before any int(): Python refuses 4,300 digits itself
        raise ValueError(f"{value[:20]!r}... ({len(value)} characters) is not a size: a size is {ACCEPTED}")
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None or (match.group(2) is None and not match.group(1).isdigit()):
        hint = suggest(value)
        why = "is negative" if isinstance(value, (int, float)) and value < 0 else "is not a size"
        meant = f" (did you mean {hint!r}?)" if hint else ""
        raise ValueError(f"{value!r} {why}{meant}: a size is {ACCEPTED}")
    number, unit = match.groups()
    size = int(number) * UNITS[unit or "B"] if number.isdigit() else _fraction(number, UNITS[unit])
    return _bounded(size, value)


# The largest size taken: 16 EiB, what a 64-bit byte count holds (no device or host comes near it); a longer text
# cannot spell a size at all.
MAX_SIZE = (1 << 64) - 1
MAX_TEXT = 40


def _bounded(size: int, value: object) -> int:
    if size > MAX_SIZE:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(f"{shown} is too large: a size is at most {MAX_SIZE} bytes (16 EiB)")
    return size


def _fraction(number: str, scale: int) -> int:
    """`number` (digits, a point, digits) times `scale`, rounded down, computed exactly (no float rounding)."""
    whole, _, part = number.partition(".")
    return (int(whole + part) * scale) // 10 ** len(part)


_LOOSE = re.compile(r"\s*([0-9][0-9_,]*(?:[.,][0-9]+)?)\s*([A-Za-z]*)\s*")
_BY_CASE = {unit.lower(): unit for unit in UNITS}
_BY_CASE.update({unit[0].lower() + "i": unit for unit in UNITS if unit.endswith("iB")})  # Gi -> GiB


def suggest(value: object) -> str | None:
    """The size `value` most likely meant, spelled as `parse_size` takes it, or None when nothing is close:
    `8gb` -> `8GB`, `8 gib` -> `8 GiB`, `8Gi` -> `8GiB`, `1e9` -> `1000000000`, `8_000` -> `8000`, `6,5GB` ->
    `6.5GB`. A bare `G` or `M` is not guessed: it may mean either a power of 1000 or of 1024."""
    if not isinstance(value, str) or isinstance(value, bool):
        return None
    exponent = _exponent(value)
    if exponent is not None:
        return exponent
    loose = _LOOSE.fullmatch(value)
    if loose is None:
        return None
    number, unit = loose.groups()
    number = re.sub(r"[_,](?=[0-9]{3}(?:[_,.]|$))", "", number).replace(",", ".")
    if unit and unit.lower() not in _BY_CASE:
        return None
    space = " " if re.search(r"[0-9]\s+[A-Za-z]", value) else ""
    fixed = f"{number}{space}{_BY_CASE[unit.lower()]}" if unit else number
    return fixed if fixed != value and _SIZE.fullmatch(fixed) and (unit or fixed.isdigit()) else None


def _exponent(value: str) -> str | None:
    """A whole, non-negative number written with an exponent (`1e9`, `2.5E+10`) as plain digits, else None."""
    if not re.fullmatch(r"\s*[0-9]+(?:\.[0-9]+)?[eE][+]?[0-9]{1,2}\s*", value):
        return None
    mantissa, _, exponent = value.strip().lower().partition("e")
    whole, _, part = mantissa.partition(".")
    shift = int(exponent) - len(part)
    digits = int(whole + part)
    if shift >= 0:
        return str(digits * 10 ** shift)
    return str(digits // 10 ** -shift) if digits % 10 ** -shift == 0 else None


def human(n: int, largest: str = "TiB") -> str:
    """Bytes in binary units with two decimals, the way reports show them: 5134927368 -> '4.78 GiB', 512 -> '512 B';
    `largest` is the largest unit used (`planner inspect` stops at GiB).

    The text parses back with `parse_size` (to within the rounding of the two decimals). Integer arithmetic only: a
    size past 1e308 bytes would overflow a float.
    """
    scales = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
    for unit, scale in scales[[u for u, _ in scales].index(largest):]:
        if n >= scale:
            return f"{_hundredths(n, scale)} {unit}"
    return f"{n} B"


def _hundredths(n: int, scale: int) -> str:
    """`n / scale` with two decimals, rounded half to even as float formatting does, without a float."""
    q, r = divmod(n * 100, scale)
    if 2 * r > scale or (2 * r == scale and q % 2):
        q += 1
    return f"{q // 100}.{q % 100:02d}"
