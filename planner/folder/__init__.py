"""Model folders read without loading weights: model_index.json and each component's safetensors headers.

`reader.read` sizes a pipeline folder or hub repo (`sizes.ModelSizes`); `check.check_plans` compares plans with it
(`planner validate --model`); `text.render_text` is `planner inspect`'s table. The modules: `sizes` (the values),
`bounds` (what one read may cost and print), `files` (opening files without blocking), `safetensors` (the header
parser), `pipeline` (choosing each component's weights as diffusers does), `local` and `hub` (the two sources),
`reader`, `check`, `text`. Pure: json, struct and pathlib; huggingface_hub only to read a hub id. A bad folder never
raises: problems are values (PLN4xx), bounded in number and length.
"""
