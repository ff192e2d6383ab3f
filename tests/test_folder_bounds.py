"""planner.folder's bounds (issue 20), counted instead of timed: the bytes each read takes from the folder's files,
the files it opens, the problems it returns and the characters every command prints, for folders past each bound;
the rule a component gets from what model_index.json says it is; the links that are followed."""

import json
import os
import re
import struct
from pathlib import Path

import headers
import pytest
from test_folder_corpus import CASES, UNET, VAE, index, model, sharded

from planner.folder import bounds, files, local, reader, safetensors
from planner.folder import pipeline as folder_pipeline
from planner.report.common import clip_middle

ROOT = Path(__file__).parent.parent


class Counted:
    """Every open of a model folder's files and the bytes read from each (`counting` installs it)."""

    def __init__(self):
        self.opened: list[str] = []
        self.read: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.read.values())


@pytest.fixture
def counting(monkeypatch) -> Counted:
    counted = Counted()
    original = files.open_regular

    def open_counted(path):
        f, size = original(path)
        where = os.fsdecode(path)
        counted.opened.append(where)
        return _File(f, where, counted), size

    monkeypatch.setattr(files, "open_regular", open_counted)
    monkeypatch.setattr(safetensors, "open_regular", open_counted)
    return counted


class _File:
    def __init__(self, f, where: str, counted: Counted):
        self.f, self.where, self.counted = f, where, counted

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.counted.read[self.where] = self.counted.read.get(self.where, 0) + len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def only(problems, rule):
    assert [p.rule for p in problems] == [rule], problems
    return problems[0]


def padded_shard(path: Path, tensor: str, pad: int) -> None:
    """A one-tensor shard whose header carries `pad` bytes of metadata."""
    headers.write_file(path, [(tensor, "F32", (2,))], {"pad": "x" * pad})


# --- the values, where they are stated --------------------------------------------------------------------------


def test_the_bounds_are_the_values_the_readme_states():
    assert (bounds.MAX_JSON_BYTES, bounds.MAX_HEADER_BYTES, bounds.MAX_FOLDER_BYTES) == (16 * 2**20, 100_000_000,
                                                                                        512 * 2**20)
    assert (bounds.MAX_JSON_VALUES, bounds.MAX_TENSORS, bounds.MAX_COMPONENTS) == (2_000_000, 200_000, 1_000)
    assert (bounds.MAX_NAME_CHARS, bounds.MAX_MESSAGE_CHARS, bounds.MAX_PROBLEMS, bounds.LISTED) == (200, 1_000, 50, 8)
    assert files.MAX_JSON_BYTES == bounds.MAX_JSON_BYTES and safetensors.MAX_HEADER_BYTES == bounds.MAX_HEADER_BYTES
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Inspecting a model folder"):]
    section = section[:section.index("\n## ", 1)]
    for stated in ("16 MiB", "100 MB", "512 MiB", "2,000,000 JSON values", "200,000 tensors", "1,000 components",
                   "200 characters", "1,000 characters", "50 problems", "8 names"):
        assert stated in section, stated


def test_a_real_pipeline_stays_far_below_every_bound(real_sized):
    for folder, variant in ((real_sized["sdxl"], "fp16"), (real_sized["sdxl"], None), (real_sized["flux"], None)):
        source = local.Folder(Path(folder))
        found, problems = folder_pipeline.read_pipeline(source, str(folder), variant, None)
        assert problems == [] and found.components
        budget = source.budget
        assert not budget.spent
        assert budget.read < bounds.MAX_FOLDER_BYTES // 400  # SDXL: 0.33 MB of JSON and headers
        assert bounds.MAX_JSON_VALUES - budget.values < bounds.MAX_JSON_VALUES // 50  # SDXL: 19,899 values
        used = bounds.MAX_TENSORS - budget.tensors
        assert used == sum(len(c.tensors) for c in found.components.values()) < bounds.MAX_TENSORS // 50


# --- work: past a bound, the file that met it is the one problem, and nothing more is read -----------------------


def test_a_header_past_the_json_values_is_refused_undecoded_and_nothing_after_it_is_opened(tmp_path, counting):
    root = tmp_path / "m"
    CASES["bounds_header_past_the_json_values"](root)
    found, problems = reader.read(root)
    unet = root / "unet" / "diffusion_pytorch_model.safetensors"
    assert only(problems, "PLN404").path == str(unet)
    assert counting.opened == [str(root / "model_index.json"), str(unet)]
    assert counting.read[str(unet)] == unet.stat().st_size - 1  # its header, not the byte of data
    assert found.unread == ("unet", "vae") and not found.components


def test_a_header_past_the_tensors_builds_none_of_them(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(safetensors, "Tensor", lambda *a: built.append(a))
    CASES["bounds_header_past_the_tensors"](tmp_path / "m")
    assert "declares 200,001 tensors" in only(reader.read(tmp_path / "m")[1], "PLN404").message
    assert built == []


def test_the_folder_byte_bound_stops_at_the_shard_that_crosses_it(tmp_path, monkeypatch, counting):
    """Ten shards of 300 kB headers under a 1 MiB bound: the fourth crosses it; the six after it and the vae are never
    opened, and the bytes read stay within the bound (plus the 8-byte length of the header refused)."""
    monkeypatch.setattr(bounds, "MAX_FOLDER_BYTES", 2**20)
    root = index(tmp_path / "m", unet=UNET, vae=VAE)
    shards = [f"diffusion_pytorch_model-{i:05d}-of-00010.safetensors" for i in range(1, 11)]
    sharded(root, "unet", {f"t{i}": shard for i, shard in enumerate(shards)})
    for i, shard in enumerate(shards):
        padded_shard(root / "unet" / shard, f"t{i}", 300_000)
    model(root, "vae")
    found, problems = reader.read(root)
    p = only(problems, "PLN404")
    assert p.path == str(root / "unet" / shards[3])
    assert re.fullmatch(r"not read: reading its header \(300,\d{3} bytes\) would take this folder past 1,048,576 "
                        r"bytes \(1 MiB\), the most read from one model folder's JSON files and headers together "
                        r"\(9\d\d,\d{3} bytes read before it\): nothing more is read", p.message), p.message
    assert p.fix == bounds.PAST_A_BOUND
    assert counting.total <= bounds.MAX_FOLDER_BYTES + 8
    assert not any(shard in path for path in counting.opened for shard in shards[4:])
    assert not any("vae" in path for path in counting.opened)
    assert found.unread == ("unet", "vae")


def test_the_tensor_bound_holds_across_shards_and_components(tmp_path, monkeypatch, counting):
    monkeypatch.setattr(bounds, "MAX_TENSORS", 100)
    root = index(tmp_path / "m", unet=UNET, vae=VAE)
    shards = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    spec = [(f"t{i}", "F32", (2,)) for i in range(120)]
    sharded(root, "unet", {name: shards[i // 60] for i, (name, _, _) in enumerate(spec)})
    headers.write_file(root / "unet" / shards[0], spec[:60])
    headers.write_file(root / "unet" / shards[1], spec[60:])
    model(root, "vae")
    p = only(reader.read(root)[1], "PLN404")
    assert p.path == str(root / "unet" / shards[1])
    assert p.message == ("refused: it declares 60 tensors, more than the 40 left of the 100 read from one model "
                         "folder's headers together (60 in the headers read before it): nothing more is read")
    assert not any("vae" in path for path in counting.opened)


def test_the_json_values_bound_holds_for_shard_indexes_too(tmp_path, monkeypatch, counting):
    monkeypatch.setattr(bounds, "MAX_JSON_VALUES", 1_000)
    root = index(tmp_path / "m", unet=UNET, vae=VAE)
    index_file = sharded(root, "unet", {f"t{i}": "diffusion_pytorch_model-00001-of-00001.safetensors"
                                        for i in range(2_000)})
    model(root, "vae")
    p = only(reader.read(root)[1], "PLN406")
    assert p.path == str(index_file) and p.message.startswith(
        "diffusion_pytorch_model.safetensors.index.json may hold 2,00")
    assert p.fix == bounds.PAST_A_BOUND
    assert not any("vae" in path for path in counting.opened)


def test_too_many_components_are_refused_before_any_folder_is_listed(tmp_path, monkeypatch):
    listed = []
    monkeypatch.setattr(local.Folder, "listing", lambda self, name: listed.append(name))
    CASES["bounds_too_many_components"](tmp_path / "m")
    found, problems = reader.read(tmp_path / "m")
    assert found is None and "names 1,001 components" in only(problems, "PLN402").message and listed == []


def test_the_hub_holds_the_tensor_bound_and_fetches_no_header_after_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(bounds, "MAX_TENSORS", 100)
    root = index(tmp_path / "m", unet=UNET)
    shards = [f"diffusion_pytorch_model-{i:05d}-of-00010.safetensors" for i in range(1, 11)]
    spec = [(f"t{i}", "F32", (2,)) for i in range(600)]
    sharded(root, "unet", {name: shards[i // 60] for i, (name, _, _) in enumerate(spec)})
    for i, shard in enumerate(shards):
        headers.write_file(root / "unet" / shard, spec[60 * i:60 * (i + 1)])
    server = headers.HubServer({"org/many": root})
    with server as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        found, problems = reader.read("org/many")
    p = only(problems, "PLN404")
    assert p.path == f"org/many/unet/{shards[1]}" and "declares 60 tensors, more than the 40 left" in p.message
    fetched = {r[1].rsplit("/", 1)[1] for r in server.requests if r[1].endswith(".safetensors")}
    assert fetched == set(shards[:8])  # the first eight together; none after the bound was met
    assert found.unread == ("unet",)


# --- output: bounded in every command and format --------------------------------------------------------------------


def test_clip_middle_keeps_both_ends_and_the_limit():
    assert clip_middle("abcdef", 6) == "abcdef"
    assert clip_middle("abcdefghij", 7) == "ab...ij"
    assert clip_middle("abcdefghij", 8) == "abc...ij" and len(clip_middle("x" * 10**6, 200)) == 200
    assert clip_middle("abcdef", 3) == "abc"
    assert bounds.shown("x" * 10**6)[:2] == "'x" and bounds.shown("x" * 10**6)[-2:] == "x'"
    assert len(bounds.shown("\x00" * 10**6)) == 200 and bounds.shown("unet") == "'unet'"
    assert bounds.listed([str(i) for i in range(20)]) == "0, 1, 2, 3, 4, 5, 6, 7, ... (20 in all)"


def test_a_read_returns_at_most_fifty_problems_then_counts_the_rest(tmp_path):
    index(tmp_path / "m", **{f"vae_{i:03d}": VAE for i in range(999)})
    problems = reader.read(tmp_path / "m")[1]
    assert len(problems) == bounds.MAX_PROBLEMS + 1
    assert problems[-1].message.startswith("... and 949 more problems (949 PLN403), not listed")
    assert problems[-1].path == str(tmp_path / "m")


def test_every_message_is_cut_to_its_bound():
    from planner.rules import PLN404

    cut = bounds.capped([PLN404.problem("w", "y" * 10**6 + "end", "z" * 10**6)], "folder")[0]
    assert len(cut.message) == len(cut.fix) == bounds.MAX_MESSAGE_CHARS and cut.message.endswith("yend")


HOSTILE = ["output_many_problems", "output_many_missing_shards", "output_long_tensor_name", "output_unsafe_shard_names",
           "bounds_too_many_components", "bounds_names_too_long"]


@pytest.mark.parametrize("name", HOSTILE)
def test_every_command_and_format_prints_a_bounded_report(name, tmp_path, capsys):
    """What a hostile folder makes each command print: at most 51 problem lines and some tens of kB, where they
    printed 24 MB (100,000 components), 5 MB (a line of missing shards) or a 300,000-character name."""
    from planner.cli import main

    root = tmp_path / "m"
    CASES[name](root)
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents: [unet]\n")
    commands = [["inspect", str(root)], ["inspect", str(root), "--format", "json"],
                ["init", "--model", str(root)], ["simulate", str(plan), "--model", str(root), "--budget", "8GiB"],
                *(["validate", "--model", str(root), str(plan), "--format", f]
                  for f in ("text", "json", "github", "sarif", "junit"))]
    for argv in commands:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        printed = out.out + out.err
        assert code == 1, (argv, printed[:2000])
        assert len(printed) < 80_000, (argv, len(printed))
        assert printed.count("PLN4") <= 4 * (bounds.MAX_PROBLEMS + 1), argv  # junit names a rule 3 times a problem
        if argv[-1] not in ("json", "sarif", "junit"):  # data formats list the components not read, all of them
            assert max(map(len, printed.splitlines())) < 5_000, argv
            assert "vae_50" not in printed, argv  # output_many_problems: the 51st problem on are counted, not shown
        elif argv[0] == "inspect":
            assert len(json.loads(out.out)["problems"]) <= bounds.MAX_PROBLEMS + 1


# --- the rule: what model_index.json says a component is --------------------------------------------------------


def test_the_kinds_agree_with_the_declared_types_of_every_diffusers_pipeline():
    """component_kind names what the shipped index decided on the real classes: every declared type of a component
    that is no model is not judged a model, and every lone type of a model component is one."""
    doc = json.loads((ROOT / "planner" / "data" / "pipelines.json").read_text(encoding="utf-8"))
    judged = 0
    for record in doc["pipelines"].values():
        for component in record["components"].values():
            for declared in component["types"]:
                library, _, class_name = declared.partition(".")
                if library not in ("diffusers", "transformers"):
                    continue
                kind = folder_pipeline.component_kind(library, class_name)
                if component["model"] is False:
                    assert kind != "model", declared
                elif component["model"] is True and len(component["types"]) == 1:
                    assert kind == "model", declared
                judged += 1
    assert judged > 500
    assert folder_pipeline.component_kind("diffusers", "AceStepAudioTokenizer") == "model"  # a ModelMixin
    assert folder_pipeline.component_kind("stable_diffusion", "StableDiffusionSafetyChecker") is None


def test_an_empty_unet_is_a_model_without_weights_for_every_command(tmp_path, capsys):
    from planner.cli import main

    root = tmp_path / "m"
    CASES["rule_empty_unet"](root)
    found, problems = reader.read(root)
    assert found.unread == ("unet",) and dict(found.others) == {"scheduler": ("diffusers", "PNDMScheduler")}
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndevice: cuda\ncomponents: [unet]\n")
    assert main(["validate", "--model", str(root), str(plan)]) == 1
    out = capsys.readouterr().out
    assert "PLN403 unet is a UNet2DConditionModel" in out and "PLN301" not in out and "not a model" not in out
    assert main(["init", "--model", str(root), "--output", str(tmp_path / "new.yaml")]) == 1
    assert not (tmp_path / "new.yaml").exists()
    assert main(["inspect", str(root)]) == 1


def test_another_librarys_component_is_judged_by_its_folder(tmp_path):
    root = index(tmp_path / "m", vae=VAE, safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"])
    model(root, "vae")
    (root / "safety_checker").mkdir()
    found, problems = reader.read(root)
    assert problems == [] and "safety_checker" in found.others
    model(root, "safety_checker", "transformers")
    assert "safety_checker" in reader.read(root)[0].components


# --- links: followed wherever they lead, as the hub cache needs -------------------------------------------------


def test_links_out_of_the_folder_are_followed_as_in_the_hub_cache(tmp_path):
    """A snapshot of the hub cache: every file a link into ../../blobs, a component folder a link too."""
    blobs = tmp_path / "cache" / "blobs"
    built = tmp_path / "built"
    headers.write_index(built, "StableDiffusionPipeline", {"vae": VAE, "unet": UNET})
    for name in ("vae", "unet"):
        headers.write_file(built / name / "diffusion_pytorch_model.safetensors", [("w", "F32", (4,))])
    snapshot = tmp_path / "cache" / "snapshots" / "0123"
    blobs.mkdir(parents=True)
    for path in sorted(p for p in built.rglob("*") if p.is_file()):
        rel = path.relative_to(built)
        blob = blobs / f"{len(list(blobs.iterdir())):04d}"
        path.rename(blob)
        link = (snapshot / "elsewhere" if rel.parts[0] == "unet" else snapshot) / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (snapshot / "unet").symlink_to("elsewhere/unet")  # a component folder that is a link
    found, problems = reader.read(snapshot)
    assert problems == [] and {n: c.bytes for n, c in found.components.items()} == {"vae": 16, "unet": 16}


def test_a_link_loop_for_a_component_folder_is_one_problem(tmp_path):
    root = index(tmp_path / "m", unet=UNET)
    (root / "unet").symlink_to("unet")
    p = only(reader.read(root)[1], "PLN403")
    assert p.message == "model_index.json names unet (UNet2DConditionModel) but unet is a symbolic link loop, not a " \
                        "folder"


def test_a_header_past_what_is_left_of_the_budget_is_not_read(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"{}")
    assert safetensors.read_header(path) == ((), None)
    budget = bounds.Budget()
    budget.bytes = 5
    assert "would take this folder past" in safetensors.read_header(path, budget)[1].message and budget.spent
