"""The host's memory from /proc and the cgroup files, and the pinning choice within what it can spare."""

import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.budget import host
from planner.budget.host import MARGIN, HostMemory, PinError, Pinning, choose_pinned, parse_pin, read_host_memory

GiB = 1 << 30
MEMINFO = "MemTotal:       {total} kB\nMemFree:        1024 kB\nMemAvailable:   {available} kB\nCached: 8 kB\n"
V1_UNLIMITED = "9223372036854771712\n"


@pytest.fixture(autouse=True)
def no_real_host(monkeypatch):
    """Fake trees only: the sysconf fallback and RLIMIT_MEMLOCK would read this machine."""
    monkeypatch.setattr(host, "_sysconf_memory", lambda: (None, None))
    monkeypatch.setattr(host, "_locked_limit", lambda: None)


def tree(root: Path, files: dict[str, str]) -> Path:
    """Writes `files` (relative path -> text) under `root` and returns it."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def read(tmp_path: Path, proc: dict[str, str], cgroup: dict[str, str]) -> HostMemory:
    return read_host_memory(proc_root=tree(tmp_path / "proc", proc), cgroup_root=tree(tmp_path / "cg", cgroup))


def meminfo(total_gib: int, available_gib: int) -> dict[str, str]:
    return {"meminfo": MEMINFO.format(total=total_gib << 20, available=available_gib << 20)}


# -- /proc/meminfo -------------------------------------------------------------------------------------------------
def test_meminfo_gives_total_and_available_in_bytes(tmp_path):
    memory = read(tmp_path, meminfo(32, 20), {})
    assert (memory.total, memory.available, memory.limit, memory.usage) == (32 * GiB, 20 * GiB, None, None)


def test_old_kernels_without_memavailable_count_free_buffers_and_cache_less_shmem(tmp_path):
    text = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 300 kB\nShmem: 50 kB\n"
    memory = read(tmp_path, {"meminfo": text}, {})
    assert memory.available == (100 + 10 + 300 - 50) * 1024


def test_available_never_exceeds_total(tmp_path):
    memory = read(tmp_path, {"meminfo": "MemTotal: 100 kB\nMemAvailable: 900 kB\n"}, {})
    assert memory.available == memory.total == 100 * 1024


@pytest.mark.parametrize("text", [
    "", "garbage", "MemTotal: lots kB\nMemAvailable: 5 kB\n", "MemTotal: -5 kB\n", "MemTotal: 5 MB\n",
    "MemTotal: 0 kB\n", "MemTotal: " + "9" * 30 + " kB\n", "MemTotal 5 kB\n", "\x00\xff\n" * 3])
def test_garbled_meminfo_leaves_total_unknown_and_spare_zero(tmp_path, text):
    memory = read(tmp_path, {"meminfo": text}, {})
    assert memory.total is None and memory.available is None and memory.spare == 0


def test_meminfo_without_available_or_free_leaves_available_unknown(tmp_path):
    memory = read(tmp_path, {"meminfo": "MemTotal: 1000 kB\n"}, {})
    assert memory.total == 1000 * 1024 and memory.available is None and memory.spare == 0


def test_binary_meminfo_is_no_text(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_bytes(b"MemTotal: \xff\xfe 5 kB\n")
    assert read_host_memory(proc_root=proc, cgroup_root=tmp_path / "none").total is None


def test_a_directory_or_fifo_where_a_file_should_be_is_skipped(tmp_path):
    (tmp_path / "proc" / "meminfo").mkdir(parents=True)
    assert read_host_memory(proc_root=tmp_path / "proc", cgroup_root=tmp_path).total is None
    if hasattr(os, "mkfifo"):
        cg = tmp_path / "fifo" / "cg"
        cg.mkdir(parents=True)
        os.mkfifo(cg / "memory.max")  # reading it would block forever
        memory = read(tmp_path / "fifo", meminfo(8, 4), {})
        assert memory.limit is None and memory.total == 8 * GiB


def test_missing_roots_fall_back_to_sysconf(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "_sysconf_memory", lambda: (16 * GiB, 3 * GiB))
    memory = read_host_memory(proc_root=tmp_path / "no-proc", cgroup_root=tmp_path / "no-sys")
    assert (memory.total, memory.available, memory.limit, memory.usage) == (16 * GiB, 3 * GiB, None, None)
    assert memory.spare == 3 * GiB - max(MARGIN, 16 * GiB // 10)


def test_no_meminfo_and_no_sysconf_reads_as_unknown_and_spares_nothing(tmp_path):
    memory = read_host_memory(proc_root=tmp_path / "no-proc", cgroup_root=tmp_path / "no-sys")
    assert memory == HostMemory(total=None, available=None, limit=None, usage=None, locked_limit=None)
    assert memory.spare == 0 and memory.limited_by == "unknown" and memory.margin == MARGIN


def test_sysconf_fallback_survives_a_platform_without_the_names(monkeypatch):
    monkeypatch.undo()  # the real helper, with os.sysconf replaced
    def refuse(name):
        raise ValueError(f"unrecognized configuration name {name}")
    monkeypatch.setattr(host.os, "sysconf", refuse)
    assert host._sysconf_memory() == (None, None)
    monkeypatch.setattr(host.os, "sysconf", lambda name: {"SC_PHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}.get(name, -1))
    assert host._sysconf_memory() == (40960, None)


def test_locked_limit_reads_rlimit_memlock(monkeypatch):
    monkeypatch.undo()
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (65536, 65536))
    assert host._locked_limit() == 65536
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert host._locked_limit() is None
    def refuse(which):
        raise OSError("no")
    monkeypatch.setattr(resource, "getrlimit", refuse)
    assert host._locked_limit() is None


# -- cgroup v2 -------------------------------------------------------------------------------------------------------
def test_v2_limit_and_usage_at_the_root(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": "0::/\n"},
                  {"memory.max": f"{16 * GiB}\n", "memory.current": f"{4 * GiB}\n"})
    assert (memory.limit, memory.usage) == (16 * GiB, 4 * GiB)
    assert memory.spare == 12 * GiB - max(MARGIN, 16 * GiB // 10) and memory.limited_by == "container"


def test_v2_max_means_unlimited_and_usage_is_still_reported(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": "0::/\n"},
                  {"memory.max": "max\n", "memory.current": f"{4 * GiB}\n"})
    assert (memory.limit, memory.usage) == (None, 4 * GiB)
    assert memory.spare == 50 * GiB - 64 * GiB // 10 and memory.limited_by == "host"


def test_v2_nested_cgroup_from_self_cgroup_is_read_and_its_ancestors_bind(tmp_path):
    cgroup = {"user.slice/memory.max": f"{10 * GiB}\n", "user.slice/memory.current": f"{9 * GiB}\n",
              "user.slice/app.scope/memory.max": f"{6 * GiB}\n", "user.slice/app.scope/memory.current": f"{GiB}\n",
              "memory.max": f"{100 * GiB}\n", "memory.current": "0\n"}
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": "0::/user.slice/app.scope\n"}, cgroup)
    # the scope leaves 5 GiB, its parent only 1 GiB: the parent binds
    assert (memory.limit, memory.usage) == (10 * GiB, 9 * GiB)
    del cgroup["user.slice/memory.max"]
    memory = read(tmp_path / "again", {**meminfo(64, 50), "self/cgroup": "0::/user.slice/app.scope\n"}, cgroup)
    assert (memory.limit, memory.usage) == (6 * GiB, GiB)


def test_v2_path_missing_under_the_mount_falls_back_to_the_root_files(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": "0::/docker/abc123\n"},
                  {"memory.max": f"{8 * GiB}\n", "memory.current": f"{2 * GiB}\n"})
    assert (memory.limit, memory.usage) == (8 * GiB, 2 * GiB)


@pytest.mark.parametrize("path", ["/../../etc", "relative/path", "/a/../../b"])
def test_a_cgroup_path_that_climbs_reads_the_root_only(tmp_path, path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "memory.max").write_text("1\n")  # outside the cgroup root: never read
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": f"0::{path}\n"},
                  {"memory.max": f"{8 * GiB}\n", "memory.current": "0\n"})
    assert memory.limit == 8 * GiB


def test_v2_memory_high_counts_as_a_limit(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": "0::/\n"},
                  {"memory.max": f"{16 * GiB}\n", "memory.high": f"{12 * GiB}\n", "memory.current": "0\n"})
    assert memory.limit == 12 * GiB


def test_usage_is_the_working_set_without_inactive_file_cache(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50)}, {"memory.max": f"{16 * GiB}\n", "memory.current": f"{6 * GiB}\n",
                                                   "memory.stat": f"anon 1\ninactive_file {4 * GiB}\nbad line\n"})
    assert memory.usage == 2 * GiB
    memory = read(tmp_path / "more", {**meminfo(64, 50)},
                  {"memory.current": f"{GiB}\n", "memory.stat": f"inactive_file {4 * GiB}\n"})
    assert memory.usage == 0


def test_a_limit_with_unreadable_usage_spares_nothing(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50)}, {"memory.max": f"{16 * GiB}\n", "memory.current": "lots\n"})
    assert (memory.limit, memory.usage, memory.spare, memory.limited_by) == (16 * GiB, None, 0, "unknown")


@pytest.mark.parametrize("garbage", ["", "max max", "-1", "12.5", "0", "1e9", "9" * 40, "\x00"])
def test_garbled_limit_files_read_as_no_limit(tmp_path, garbage):
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": "garbage\n::\n0::\n"},
                  {"memory.max": garbage, "memory.current": garbage,
                   "memory/memory.limit_in_bytes": garbage, "memory/memory.usage_in_bytes": garbage})
    assert memory.limit is None and memory.spare == 50 * GiB - 64 * GiB // 10


# -- cgroup v1 -------------------------------------------------------------------------------------------------------
def test_v1_limit_and_usage(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50)},
                  {"memory/memory.limit_in_bytes": f"{16 * GiB}\n", "memory/memory.usage_in_bytes": f"{3 * GiB}\n",
                   "memory/memory.stat": f"cache 5\ninactive_file 7\ntotal_inactive_file {GiB}\n"})
    assert (memory.limit, memory.usage) == (16 * GiB, 2 * GiB)
    assert memory.spare == 14 * GiB - 16 * GiB // 10


def test_v1_huge_value_means_unlimited(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50)},
                  {"memory/memory.limit_in_bytes": V1_UNLIMITED, "memory/memory.usage_in_bytes": f"{GiB}\n"})
    assert (memory.limit, memory.usage) == (None, GiB)


def test_v1_nested_memory_path_from_self_cgroup(tmp_path):
    cgroup_file = "12:cpu,cpuacct:/other\n4:memory:/process_api/abc\n0::/\n"
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": cgroup_file},
                  {"memory/memory.limit_in_bytes": V1_UNLIMITED, "memory/memory.usage_in_bytes": f"{9 * GiB}\n",
                   "memory/process_api/abc/memory.limit_in_bytes": f"{4 * GiB}\n",
                   "memory/process_api/abc/memory.usage_in_bytes": f"{GiB}\n"})
    assert (memory.limit, memory.usage) == (4 * GiB, GiB)
    assert memory.spare == 3 * GiB - MARGIN


def test_hybrid_hierarchy_takes_the_tighter_of_v1_and_v2(tmp_path):
    memory = read(tmp_path, {**meminfo(64, 50), "self/cgroup": "4:memory:/\n0::/\n"},
                  {"memory.max": f"{20 * GiB}\n", "memory.current": f"{GiB}\n",
                   "memory/memory.limit_in_bytes": f"{10 * GiB}\n", "memory/memory.usage_in_bytes": f"{GiB}\n"})
    assert (memory.limit, memory.usage) == (10 * GiB, GiB)


# -- spare ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("memory, spare", [
    (HostMemory(total=8 * GiB, available=6 * GiB), 5 * GiB),  # margin floor: 1 GiB
    (HostMemory(total=100 * GiB, available=60 * GiB), 50 * GiB),  # 10% of RAM
    (HostMemory(total=100 * GiB, available=60 * GiB, limit=20 * GiB, usage=5 * GiB), 13 * GiB),  # 10% of the limit
    (HostMemory(total=100 * GiB, available=60 * GiB, limit=20 * GiB, usage=30 * GiB), 0),  # over its limit
    (HostMemory(total=8 * GiB, available=GiB // 2), 0),  # less than the margin
    (HostMemory(total=None, available=None), 0),
    (HostMemory(total=8 * GiB, available=None), 0),
    (HostMemory(total=8 * GiB, available=6 * GiB, limit=4 * GiB, usage=None), 0)])
def test_spare_is_the_tighter_headroom_less_the_margin(memory, spare):
    assert memory.spare == spare


def test_host_memory_is_frozen_and_its_json_carries_the_budget():
    memory = HostMemory(total=64 * GiB, available=50 * GiB, limit=16 * GiB, usage=4 * GiB, locked_limit=65536)
    with pytest.raises(AttributeError):
        memory.total = 1
    data = json.loads(json.dumps(memory.to_json()))
    assert data == {"total": 64 * GiB, "available": 50 * GiB, "limit": 16 * GiB, "usage": 4 * GiB,
                    "locked_limit": 65536, "margin": 16 * GiB // 10, "spare": memory.spare,
                    "limited_by": "container"}


def test_real_host_reads_without_raising():
    memory = read_host_memory()
    assert memory.spare >= 0 and isinstance(memory.to_json(), dict)
    if sys.platform.startswith("linux"):
        assert memory.total > 0 and memory.available is not None


# -- pin modes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, mode", [
    ("auto", "auto"), ("true", "true"), ("false", "false"), (True, "true"), (False, "false")])
def test_parse_pin_normalises(value, mode):
    assert parse_pin(value) == mode


@pytest.mark.parametrize("value, meant", [
    ("Auto", "'auto'"), ("TRUE", "'true'"), (" false", "'false'"), ("yes", None), ("", None), (1, None),
    (0, None), (None, None), ("x" * 200, None), (["auto"], None)])
def test_parse_pin_refuses_anything_else_and_says_what_to_write(value, meant):
    with pytest.raises(ValueError, match="write pin: auto") as info:
        parse_pin(value)
    assert (f"did you mean {meant}" in str(info.value)) if meant else "did you mean" not in str(info.value)
    assert len(str(info.value)) < 200


# -- choose_pinned ---------------------------------------------------------------------------------------------------
MOVED = {"unet/down_blocks.1": (400, 30), "unet/up_blocks.0": (300, 30), "text_encoder_2/layers.3": (200, 1),
         "vae/decoder": (100, 1), "unet/rest": (500, 0)}


def test_false_pins_nothing_and_counts_the_host_copies():
    choice = choose_pinned(MOVED, "false", 10**9)
    assert choice == Pinning((), 0, 1500, 10**9, "false", choice.note) and "nothing pinned" in choice.note
    assert choose_pinned(MOVED, False, 0).pinned == ()


def test_auto_pins_the_most_transferred_first_and_skips_what_does_not_fit():
    choice = choose_pinned(MOVED, "auto", 650)
    # 400 (30 transfers) fits, 300 would pass 650, 200 fits, 100 would pass: the never-moved 500 is never pinned
    assert choice.pinned == ("unet/down_blocks.1", "text_encoder_2/layers.3")
    assert (choice.pinned_bytes, choice.host_bytes, choice.spare, choice.pin) == (600, 1500, 650, "auto")


def test_auto_with_room_pins_every_moving_block_and_never_a_still_one():
    choice = choose_pinned(MOVED, "auto", 10**12)
    assert choice.pinned == ("unet/down_blocks.1", "unet/up_blocks.0", "text_encoder_2/layers.3", "vae/decoder")
    assert choice.pinned_bytes == 1000


def test_auto_order_ties_break_by_size_then_key():
    moved = {"b": (10, 2), "a": (10, 2), "c": (20, 2), "d": (99, 3)}
    assert choose_pinned(moved, "auto", 10**6).pinned == ("d", "c", "a", "b")
    assert choose_pinned(dict(reversed(moved.items())), "auto", 10**6).pinned == ("d", "c", "a", "b")


def test_exactly_fitting_spare_pins_all():
    assert choose_pinned(MOVED, "auto", 1000).pinned_bytes == 1000
    assert choose_pinned(MOVED, "true", 1000).pinned_bytes == 1000
    assert choose_pinned(MOVED, "auto", 999).pinned_bytes == 900


def test_zero_spare_and_empty_input():
    assert choose_pinned(MOVED, "auto", 0).pinned == ()
    assert choose_pinned({}, "auto", 0) == Pinning((), 0, 0, 0, "auto", choose_pinned({}, "auto", 0).note)
    assert choose_pinned({}, "true", 0).pinned == ()
    assert choose_pinned({"still": (10, 0)}, True, 0) == Pinning((), 0, 10, 0, "true",
                                                                  choose_pinned({"still": (10, 0)}, True, 0).note)


def test_true_beyond_spare_says_what_it_needs_what_the_host_spares_and_the_fix():
    with pytest.raises(PinError) as info:
        choose_pinned(MOVED, "true", 999)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and (info.value.needed, info.value.spare) == (1000, 999)
    assert "1000 bytes" in message and "999 bytes" in message
    assert "write pin: auto, or raise the container's memory limit" in message


def test_true_error_names_the_container_limit_when_it_binds():
    memory = HostMemory(total=64 * GiB, available=50 * GiB, limit=16 * GiB, usage=10 * GiB)
    with pytest.raises(PinError) as info:
        choose_pinned({"unet/block": (8 * GiB, 30)}, "true", memory.spare, host=memory)
    message = str(info.value)
    assert "8.00 GiB" in message and "container's memory limit of 16.00 GiB is the cause" in message
    assert "10.00 GiB already in use" in message and "raise the container's memory limit" in message
    memory = HostMemory(total=64 * GiB, available=5 * GiB)
    with pytest.raises(PinError, match="available.*write pin: auto, or free host memory"):
        choose_pinned({"unet/block": (8 * GiB, 30)}, "true", memory.spare, host=memory)


@pytest.mark.parametrize("moved, spare", [
    ({"a": (-1, 1)}, 10), ({"a": (1, -1)}, 10), ({"a": (1.5, 1)}, 10), ({"a": (True, 1)}, 10), ({"a": (1,)}, 10),
    ({"a": "big"}, 10), ({1: (1, 1)}, 10), ({"a": (1, 1)}, -1), ({"a": (1, 1)}, 2.0), ({"a": (1, 1)}, None)])
def test_malformed_input_is_a_value_error(moved, spare):
    with pytest.raises(ValueError, match="must be"):
        choose_pinned(moved, "auto", spare)


def test_a_bad_mode_is_refused_before_anything_is_chosen():
    with pytest.raises(ValueError, match="not a pin mode"):
        choose_pinned(MOVED, "always", 10**9)


blocks = st.dictionaries(st.text(min_size=1, max_size=6), st.tuples(st.integers(0, 10**10), st.integers(0, 60)),
                         max_size=12)


@settings(max_examples=300, deadline=None)
@given(moved=blocks, spare=st.integers(0, 10**11), pin=st.sampled_from(["auto", "true", "false", True, False]))
def test_pinned_memory_never_exceeds_the_host_budget(moved, spare, pin):
    moving = {k for k, (_, transfers) in moved.items() if transfers > 0}
    needed = sum(moved[k][0] for k in moving)
    try:
        choice = choose_pinned(moved, pin, spare)
    except PinError as exc:
        assert parse_pin(pin) == "true" and needed > spare and exc.needed == needed
        return
    assert choice.pinned_bytes == sum(moved[k][0] for k in choice.pinned) <= spare
    assert set(choice.pinned) <= moving and len(set(choice.pinned)) == len(choice.pinned)
    assert choice.host_bytes == sum(size for size, _ in moved.values())
    if choice.pin == "true":
        assert set(choice.pinned) == moving
    if choice.pin == "auto":  # greedy: nothing left out would still have fitted after the last one taken
        left = moving - set(choice.pinned)
        assert all(choice.pinned_bytes + moved[k][0] > spare for k in left)
        assert choice.pinned == choose_pinned(dict(reversed(moved.items())), pin, spare).pinned
