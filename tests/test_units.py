"""Sizes as plans write them: one grammar for `parse_size`, the schema's pattern and check-jsonschema."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from hypothesis import example, given, settings
from hypothesis import strategies as st

from planner.rules import schema
from planner.units import ACCEPTED, SIZE_PATTERN, UNITS, human, parse_size, suggest

try:
    import regress
except ImportError:  # an optional oracle: check-jsonschema's regex engine
    regress = None


@pytest.mark.parametrize("text, expected", [
    ("8GiB", 8 << 30), ("512 MB", 512_000_000), ("6.5GB", 6_500_000_000), ("1024", 1024), ("0", 0), ("0B", 0),
    ("1KB", 1000), ("1KiB", 1024), ("2MiB", 2 << 20), ("3TB", 3 * 10**12), ("1TiB", 1 << 40), ("1.5KiB", 1536),
    ("0.1B", 0), ("1.999B", 1), ("7.0000001GiB", 7 * 2**30 + 107), ("00012 B", 12),
    ("16777215TiB", 16777215 << 40), ("18446744073709551615", (1 << 64) - 1)])
def test_sizes_parse_to_whole_bytes_rounded_down(text, expected):
    assert parse_size(text) == expected


def test_integers_are_bytes_and_a_bool_is_no_size():
    assert parse_size(0) == 0 and parse_size(8 << 30) == 8 << 30
    for value in (True, False, -1, 1.0, 8.5, None, [], {"GiB": 8}):
        with pytest.raises(ValueError) as info:
            parse_size(value)
        assert ACCEPTED in str(info.value)
    with pytest.raises(ValueError, match="is negative"):
        parse_size(-1)


@pytest.mark.parametrize("text, meant", [
    ("8gb", "8GB"), ("8Gb", "8GB"), ("8gib", "8GiB"), ("8GIB", "8GiB"), ("8 gib", "8 GiB"), ("8Gi", "8GiB"),
    ("512 mb", "512 MB"), ("1e9", "1000000000"), ("2.5E+10", "25000000000"), ("8_000", "8000"),
    ("8,000,000", "8000000"), ("6,5GB", "6.5GB"), (" 8GiB ", "8GiB"), ("8  GiB", "8 GiB"), ("8 kib", "8 KiB"),
    ("8G", None), ("8M", None), ("8.5", None), ("-1GB", None), ("1e-3", None), ("1.5e0", None), ("GiB", None),
    ("8GiBs", None), ("eight GiB", None), ("", None), ("8GiB\n", "8GiB"), (".5GB", None), ("0 ", "0"),
    ("8.5 ", None)])
def test_a_size_spelt_otherwise_is_refused_with_what_it_most_likely_meant(text, meant):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert suggest(text) == meant
    assert (f"did you mean {meant!r}?" in str(info.value)) == (meant is not None)
    assert str(info.value).startswith(repr(text)) and ACCEPTED in str(info.value)
    if meant is not None:
        parse_size(meant)  # what it suggests is a size


def test_a_bare_g_is_not_guessed_between_the_two_unit_systems():
    assert suggest("8G") is None and parse_size("8GB") != parse_size("8GiB")


@pytest.mark.parametrize("n, text", [(0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.00 KiB"),
                                     (5134927368, "4.78 GiB"), (8 << 30, "8.00 GiB"), (3 << 40, "3.00 TiB")])
def test_human_writes_binary_units_with_two_decimals(n, text):
    assert human(n) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1 << 60))
@example(1152)  # 1.125 KiB shows as "1.12 KiB" (half to even), which parses back 6 bytes short
def test_human_parses_back_to_within_its_rounding(n):
    """Two decimals of a unit no larger than n are off by at most n / 200; parsing rounds down one byte more."""
    back = parse_size(human(n))
    assert abs(back - n) <= n / 200 + 1


def test_the_schema_pattern_is_the_grammar():
    assert schema.schema()["$defs"]["size"]["pattern"] == SIZE_PATTERN
    assert set(UNITS) == {"B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"}


size_texts = st.one_of(
    st.builds(lambda n, f, s, u: f"{n}{f}{s}{u}", st.integers(0, 10**6).map(str),
              st.sampled_from(["", ".5", ".25", ".", ",5"]), st.sampled_from(["", " ", "  ", "\t"]),
              st.sampled_from([*UNITS, "", "gb", "Gb", "G", "gib", "GIB", "iB", "K", "b"])),
    st.text(alphabet=st.sampled_from("0123456789.eE+- BKMGTi\n"), max_size=8))


def _accepted(text: str) -> bool:
    try:
        parse_size(text)
    except ValueError:
        return False
    return True


@settings(max_examples=800, deadline=None)
@given(size_texts)
def test_parse_size_accepts_exactly_the_strings_the_schema_accepts(text):
    fast, authority = schema.fast_check(), schema.authority()
    plan = {"version": 1, "device": "cuda", "components": ["unet"], "policy": "budget", "budget": text}
    assert fast(plan) == authority.is_valid(plan) == _accepted(text), text


@pytest.mark.skipif(regress is None, reason="regress (check-jsonschema's ECMA-262 engine) is not installed")
@settings(max_examples=800, deadline=None)
@given(size_texts)
def test_an_ecma_262_engine_reads_the_pattern_as_parse_size_does(text):
    assert bool(regress.Regex(SIZE_PATTERN).find(text)) == _accepted(text), text


def _check_jsonschema() -> list[str] | None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("check-jsonschema")
    return [found] if found else None


@pytest.mark.skipif(_check_jsonschema() is None, reason="check-jsonschema is not installed")
def test_check_jsonschema_accepts_the_sizes_validate_accepts(tmp_path):
    values = ["8GiB", "512 MB", "6.5GB", "1024", 0, 8 << 30, "1.5 KiB", "8gb", "8G", "1e9", -1, 2.5, "8GiB\n",
              "8  GiB", "", True, "00012 B", "٣GB"]
    files = []
    for i, value in enumerate(values):
        plan = {"version": 1, "device": "cuda", "components": ["unet"], "policy": "budget", "reserve": value}
        files.append(tmp_path / f"{i:02d}.json")
        files[-1].write_text(json.dumps(plan))
    proc = subprocess.run([*_check_jsonschema(), "--schemafile", str(ROOT / "schemas" / "plan.schema.json"),
                           "-o", "json", *map(str, files)], capture_output=True, text=True)
    refused = {Path(error["filename"]).name for error in json.loads(proc.stdout)["errors"]}
    for path, value in zip(files, values, strict=True):
        assert (path.name not in refused) == _accepted(value), value


def test_a_size_beyond_16_eib_is_refused_by_parse_and_by_validate(tmp_path):
    import planner

    with pytest.raises(ValueError, match="too large"):
        parse_size((1 << 64))
    with pytest.raises(ValueError, match="too large"):
        parse_size("16777216TiB")
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\ndevice: cuda\npolicy: budget\nbudget: 16777216TiB\ncomponents: [unet]\n")
    assert [p.rule for p in planner.check(plan)] == ["PLN214"]
