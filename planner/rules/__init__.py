"""The rule list: every problem the planner reports has one of these rules, each a named object holding its id,
what it catches, its fix and its severity, in one place. Checks refer to the objects (`PLN203.at(doc, path,
message)`), never to an id written out; the README's rule table is `markdown_table()` (a test keeps them equal).

Where the checks live, by concern: the file and its YAML (PLN0xx) in `planner.loader`; schema errors mapped onto
rules (PLN1xx, and the keys whose own rule says more: PLN201, PLN206, PLN207, PLN213-215, PLN218) in
`planner.rules.schema`; the device (PLN202-205) in `planner.rules.device`; components and their order (PLN208-212,
PLN216) in `planner.rules.graph`; the budget policy's keys (PLN217-219) in `planner.rules.policy`;
the pipeline class against the shipped index (PLN5xx) in `planner.rules.pipeline`. PLN3xx arise when `planner
apply` meets the loaded pipeline (the executor), PLN4xx when a model folder is read (`planner.folder`). This module
imports nothing but the values, so every layer can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.plan import Problem

SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Rule:
    """A rule: `id` (PLN + 3 digits, stable), `title` (what it catches), `fix` (what to write instead, printed
    unless a problem has a more precise one, such as a "did you mean") and `severity` (a warning fails
    validation only under --strict)."""

    id: str
    title: str
    fix: str
    severity: str = "error"

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"rule {self.id}: severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    def problem(self, path: str, message: str, fix: str | None = None, line: int = 0, column: int = 0) -> Problem:
        """A problem of this rule in `path` (a file, or a flag such as `--device`); line 0 when it has no place."""
        return Problem(path, line, column, self.id, message, self.fix if fix is None else fix, self.severity)

    def at(self, doc, node: tuple, message: str, fix: str | None = None, key: bool = False) -> Problem:
        """A problem of this rule located at the node `node` (a path of keys and indexes) of the loaded document
        `doc` (`planner.loader.Document`), or at its key with `key`."""
        line, column = doc.where(node, key)
        return self.problem(doc.path, message, fix, line, column)

    def __str__(self) -> str:
        return self.id


# -- the file and its YAML: planner.loader -------------------------------------------------------------------
PLN000 = Rule("PLN000", "the plan file cannot be read: missing, not a regular file (a folder, a FIFO, a device), "
              "unreadable, over 1 MiB", "check the path and its permissions")
PLN001 = Rule("PLN001", "an empty file (or only comments)", "write at least `version: 1`, `device` and `components`")
PLN002 = Rule("PLN002", "bytes that are not UTF-8", "save the plan as UTF-8")
PLN003 = Rule("PLN003", "a YAML syntax error (an undefined alias, an anchor defined twice, a forbidden character "
              "included)", "fix the YAML at this place")
PLN004 = Rule("PLN004", "tab indentation", "indent with spaces; YAML does not allow tabs there")
PLN005 = Rule("PLN005", "several YAML documents in one file", "keep one plan per file and remove the `---` separator")
PLN006 = Rule("PLN006", "a duplicate key, at any depth (YAML would keep the last silently)",
              "keep one; YAML would silently use the last")
PLN007 = Rule("PLN007", 'alias expansion bombs ("billion laughs"), a self-nesting alias and absurd nesting: at '
              "most 20,000 expanded nodes, 64 levels", "write the plan out plainly, without alias chains")
PLN008 = Rule("PLN008", "YAML tags (`!!python/object`, `!foo`), standard tags holding what they cannot "
              "(`!!int abc`), and merge keys; nothing is ever constructed from a tag",
              "remove the tag: plans hold plain strings, numbers, lists and mappings")
PLN009 = Rule("PLN009", "a top level (or key) that is not a plain mapping (or name)",
              "write the plan as `key: value` lines (version, device, components, ...)")
PLN010 = Rule("PLN010", "a plain scalar that YAML 1.1 and YAML 1.2 read differently (`on`, `yes`, `010`, `1:30`, "
              "`1e3`)", "quote it to keep the text, or write the value plainly")

# -- the schema, mapped onto located problems: planner.rules.schema -----------------------------------------------
PLN101 = Rule("PLN101", 'an unknown key (with "did you mean", or where it belongs when it looks mis-indented)',
              "use one of the keys the schema lists")
PLN102 = Rule("PLN102", "a value of the wrong type, YAML 1.1 booleans (`yes`, `on`) included",
              "write the type asked for")
PLN103 = Rule("PLN103", "a missing required key (`version`, `device`, `components`)", "add the key")
PLN104 = Rule("PLN104", "a value outside the allowed set (torch_dtype, an empty string, a class name that is no "
              "identifier)", "use an allowed value")

# -- the plan's version and device: planner.rules.device (PLN201, PLN206: the schema mapping) ---------------------
PLN201 = Rule("PLN201", "a `version` other than 1 (`1.0` included)", "write `version: 1` (the only version)")
PLN202 = Rule("PLN202", "a device that cannot be an offload target (`cpu`, `meta`, `disk`)",
              "write device: cuda (or xpu, mps, ...)")
PLN203 = Rule("PLN203", 'a malformed device string or an unknown device type (with "did you mean"), an index '
              "above 127 or with a leading zero", "write a device type, optionally indexed: cuda, cuda:1, xpu, mps")
PLN204 = Rule("PLN204", "a `gpu_id` that is negative, above 127 or not an integer (`yes`, `1.0`, `\"1\"`)",
              "write `gpu_id: 0` (or 1, 2, ...)")
PLN205 = Rule("PLN205", "`gpu_id` together with an indexed device (`cuda:1`)",
              "keep one: `device: cuda` + `gpu_id: 1`, or `device: cuda:1`")
PLN206 = Rule("PLN206", "a `device_map`: offloading and device maps cannot be combined",
              "remove device_map; the plan offloads whole components")

# -- components, their order, the other keys: planner.rules.graph (PLN207, PLN213-215: the schema mapping) ------
PLN207 = Rule("PLN207", "empty `components` (allowed only when `own_hook` names the models)",
              "list the components to offload, in running order")
PLN208 = Rule("PLN208", "a name listed twice (components, `after`, `exclude`)", "keep one")
PLN209 = Rule("PLN209", '`after` naming a component the plan does not have (with "did you mean")',
              "name a component of the plan")
PLN210 = Rule("PLN210", "a component that runs after itself", "remove it from its own `after`")
PLN211 = Rule("PLN211", "a cycle of `after` edges, reported with its path (`unet -> vae -> unet`)",
              "remove one of these `after` entries")
PLN212 = Rule("PLN212", "a component in two of `components`, `exclude` and `own_hook`",
              "keep it in one: offloaded in turn, kept on the device, or a hook of its own")
PLN213 = Rule("PLN213", "a `policy` other than `chain` or `budget`",
              "write `policy: chain` (diffusers' own offload, the default) or `policy: budget`")
PLN214 = Rule("PLN214", "a `budget` or `reserve` that is not a size: negative, a float, an exponent (`1e9`), a unit "
              "spelled otherwise (`8gb`, `8G`)", "write bytes (8589934592) or a number and a unit: B, KB, MB, GB, TB "
              "(powers of 1000), KiB, MiB, GiB, TiB (powers of 1024), e.g. 8GiB, 512 MB, 6.5GB")
PLN215 = Rule("PLN215", "a component name that is not an identifier",
              "use the attribute name, as in pipe.components (letters, digits, _)")
PLN216 = Rule("PLN216", "a component without `pipe` while others name theirs (a combined pipeline hooks each connected "
              "pipeline with a chain of its own: every component says which)",
              "write `pipe: prior_pipe` (or the connected pipeline that runs it) on every component")

# -- the budget policy's keys: planner.rules.policy ------------------------------------------------------------------
PLN217 = Rule("PLN217", "`budget`, `reserve`, `keep_host_copy`, `granularity`, `prefetch` or `pin` in a plan whose "
              "policy is `chain` (the default), "
              "which ignores them: diffusers' chain loads every component in turn, whatever the memory",
              "write `policy: budget` to keep what fits within the budget, or remove the key", "warning")
PLN218 = Rule("PLN218", 'a `uses` that is empty, or names a component the plan neither offloads nor excludes (with '
              '"did you mean"), or one with a hook of its own (`own_hook`), which no policy schedules',
              "name the plan's components (or exclusions) in the order one pipeline call uses them")
PLN219 = Rule("PLN219", "a `uses` that leaves out a component the plan offloads: the budget policy does not expect "
              "it to run, and loads it outside its schedule when it does",
              "add it to uses where the pipeline calls it (or remove it from components)", "warning")

# -- at apply time, against the loaded pipeline: planner.executor ------------------------------------------------
PLN301 = Rule("PLN301", "a plan component the pipeline does not have, or that is not a model (lists what it has, "
              '"did you mean")', "name one of the pipeline's components")
PLN302 = Rule("PLN302", "a pipeline that cannot be offloaded as planned: a device map (pipeline or component), "
              "sequential, group or diffusers' own model offload already active",
              "reset the pipeline first, as the message says")
PLN303 = Rule("PLN303", "a device that is not present (no accelerator, `gpu_id` beyond the device count)",
              "run with --dry-run, or pick a present device")
PLN304 = Rule("PLN304", "a pipeline that cannot be loaded (no source, missing folder, unknown class, hub "
              "unreachable)", "check `pipeline.source` and `pipeline.class`")
PLN305 = Rule("PLN305", "a pipeline call that failed under `planner apply`", "check the generation arguments")
PLN306 = Rule("PLN306", "a plan whose `pipe` entries do not match how the loaded pipeline hooks its connected "
              "pipelines (missing on a combined pipeline that hooks each with its own chain, naming the wrong one, "
              "or given for a pipeline with one chain)", "write the `pipe` the message names, or remove it")
PLN307 = Rule("PLN307", "the budget policy cannot run within a budget here: no budget where the device's free memory "
              "cannot be read (a dry run), or a budget (given, or free memory minus reserve) below the largest "
              "component it moves plus the exclusions", "write budget: SIZE (or pass --budget), at least the size "
              "the message names")

# -- model folders, read without loading weights: planner.folder -------------------------------------------------
PLN401 = Rule("PLN401", "a source that is not a diffusers pipeline: a missing path, no model_index.json, an "
              "unknown hub repo", "name the folder that holds model_index.json, or a hub id (org/name)")
PLN402 = Rule("PLN402", "a model_index.json that is not valid JSON or not a pipeline index",
              'restore model_index.json: {"_class_name": "...", "unet": ["diffusers", "UNet2DConditionModel"], '
              "...}")
PLN403 = Rule("PLN403", "a model component without safetensors weights, or without its folder",
              "download the component's *.safetensors files, or set its entry to [null, null]")
PLN404 = Rule("PLN404", "a safetensors file whose header is not valid (not JSON, absurd length, bad offsets, "
              "unknown dtype)", "the file is damaged: download it again")
PLN405 = Rule("PLN405", "a weights file whose length disagrees with its header (truncated, oversized, a Git LFS "
              "pointer)", "download the file again (an interrupted download is the usual cause)")
PLN406 = Rule("PLN406", "a shard index that does not match its shards (missing shards, a tensor in two shards)",
              "download the index and all its shards again, together")
PLN407 = Rule("PLN407", "a variant that no component of the pipeline has",
              "leave the variant out, or name one the files have (diffusion_pytorch_model.<variant>.safetensors)")
PLN408 = Rule("PLN408", "a hub id that cannot be read: offline, hub unreachable, gated",
              "go online (unset HF_HUB_OFFLINE), or download the model and name its folder")
PLN409 = Rule("PLN409", "a `budget` below the largest component the plan offloads plus the excluded ones, which stay "
              "resident (`planner validate --model`, with the sizes)",
              "raise the budget to the least it names, or leave budget out (the free memory minus reserve)")
PLN410 = Rule("PLN410", "sizes that do not match the plan (`planner simulate --sizes`): a component the plan "
              "offloads, excludes or uses with no size, or a size for a name the plan does not have",
              "give each plan component a size (`--sizes unet=4.78GiB,vae=160MiB`; `NAME=none` for one the "
              "pipeline lacks), or read them from the model folder with --model")
PLN411 = Rule("PLN411", "`pin: true` in a plan whose streamed blocks need more pinned host memory than the host can "
              "spare (its available memory and the container's limit, less a margin)",
              "write pin: auto (pins what the host can spare), or raise the container's memory limit")

# -- the pipeline class, against the shipped index of diffusers pipelines: planner.rules.pipeline ------------------
PLN501 = Rule("PLN501", '`pipeline.class` naming no diffusers pipeline class (with "did you mean")',
              "write a class diffusers exports, as in model_index.json's _class_name")
PLN502 = Rule("PLN502", "a pipeline class the index cannot check: left out of it because its optional backend "
              "(ONNX, librosa, ...) was missing where the index was made",
              "nothing to change: planner apply checks them against the loaded pipeline", "warning")
PLN503 = Rule("PLN503", 'a component or exclusion the pipeline class does not have (lists its models, "did you '
              'mean")', "name one of the class's model components, or remove it")
PLN504 = Rule("PLN504", "a component or exclusion that the class declares as no model (a tokenizer, a scheduler, "
              "a feature extractor)", "remove it: only torch modules are offloaded")
PLN505 = Rule("PLN505", "a model component the class requires (not one of its optional components) that the plan "
              "does not name: it gets its own hook, loaded at first use and kept on the device until the call ends",
              "add it to components (in running order), to exclude, or to own_hook to say that its own hook is "
              "meant", "warning")
PLN506 = Rule("PLN506", "a class that replaces `enable_model_cpu_offload` with a fixed order of its own "
              "(AudioLDM2, MusicLDM): no plan can be put in force on it",
              "use the class's own pipe.enable_model_cpu_offload(), without a plan")
PLN507 = Rule("PLN507", "a class with no `model_cpu_offload_seq` (diffusers refuses model offload for it): the "
              "plan's order is used as written, with nothing to check it against",
              "list the components in the order the pipeline calls them", "warning")
PLN508 = Rule("PLN508", "a `pipe` that does not match how the class hooks its models: a combined class that hooks "
              "each connected pipeline with its own chain needs the pipeline holding each component; any other "
              "class hooks one chain and takes no `pipe`", "write the `pipe` the message names, or remove it")

# Every rule defined above, by id, in the order written (the README's order).
RULES: dict[str, Rule] = {r.id: r for r in globals().copy().values() if isinstance(r, Rule)}


def markdown_table() -> str:
    """The rule table as the README shows it: `| rule | severity | catches | fix |`, one row per rule."""
    rows = ["| rule | severity | catches | fix |", "|---|---|---|---|"]
    rows += [f"| {r.id} | {r.severity} | {r.title} | {r.fix} |" for r in RULES.values()]
    return "\n".join(rows) + "\n"
