"""Bad input across every subcommand, kills at chosen moments, and concurrent writers.

The robustness table: each row of `CASES` is a command line (with placeholders for the fixtures
below) and either a fragment its one error line must contain (bad input: exit 2, one line on
stderr, nothing left behind) or `OK` (it must succeed). Around every row sits a tree of the
user's files: every fixture (the inputs and the folder they lie in), the demo model, and siblings
of the output named like ours (`out.old-v1` holding a manifest, `out.tmp-keep` a month old,
`out.work`); after the row, every one of them hashes as before, and nothing but `out` was added.
Other modules test the same contract for their own options; this matrix is the hostile-user
sweep in one place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, assert_one_line_error
from safetensors.torch import load_file, save_file
from test_gguf_source import rewrite_gguf

import compress
from compress.artifact import read_manifest
from compress.export.runner import export_gguf

WEIGHTS = "model.safetensors"


def _copy(model: Path, target: Path) -> Path:
    shutil.copytree(model, target)
    return target


def _edit_weights(model: Path, target: Path, edit) -> Path:
    _copy(model, target)
    weights = load_file(target / WEIGHTS)
    edit(weights)
    save_file(weights, target / WEIGHTS, metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def broken(demo, tmp_path_factory) -> dict[str, Path]:
    """The fast demo model, and copies of it broken in every way a download or export can break."""
    model = Path(demo[0])
    root = tmp_path_factory.mktemp("broken")
    paths = {"model": model}

    truncated = _copy(model, root / "truncated")
    data = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(data[: len(data) // 2])
    paths["truncated"] = truncated
    garbage = _copy(model, root / "garbage")
    (garbage / WEIGHTS).write_bytes(os.urandom(40_000))
    paths["garbage"] = garbage
    bad_config = _copy(model, root / "bad-config")
    (bad_config / "config.json").write_text("{not json")
    paths["bad_config"] = bad_config
    no_config = _copy(model, root / "no-config")
    (no_config / "config.json").unlink()
    paths["no_config"] = no_config
    no_weights = _copy(model, root / "no-weights")
    (no_weights / WEIGHTS).unlink()
    paths["no_weights"] = no_weights
    paths["missing_tensor"] = _edit_weights(
        model, root / "missing-tensor", lambda w: w.pop("model.layers.0.mlp.up_proj.weight")
    )
    paths["extra_tensor"] = _edit_weights(
        model, root / "extra-tensor", lambda w: w.update({"model.layers.0.surprise": torch.zeros(4)})
    )

    def poison(weights):
        weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")

    paths["nan"] = _edit_weights(model, root / "nan", poison)

    def overflow(weights):
        weights["model.layers.1.self_attn.o_proj.weight"][0, 0] = float("inf")

    paths["inf"] = _edit_weights(model, root / "inf", overflow)
    paths["artifact"] = compress.quantize(model, root / "rtn-artifact", method="rtn", bits=4, device="cpu")

    texts = root / "texts"
    texts.mkdir()
    (texts / "random.txt").write_bytes(os.urandom(20_000))
    (texts / "empty.txt").write_text("\n\n\n")
    (texts / "tiny.txt").write_text("def f():\n    return 1\n")
    (texts / "prompts.jsonl").write_text(json.dumps({"a": "x", "b": "y"}) + "\n")
    (texts / "long.txt").write_text(Path(shutil.__file__).read_text())  # Python source, like the demo's
    paths.update({f"text_{p.stem}": p for p in texts.iterdir()})

    recipes = root / "recipes"
    recipes.mkdir()
    (recipes / "not-yaml.yaml").write_text("stages: [unclosed")
    (recipes / "unknown-key.yaml").write_text(f"model: {model}\nstages:\n  - name: a\n    bogus: 1\n")
    (recipes / "no-stages.yaml").write_text(f"model: {model}\nstages: []\n")
    head = f"version: 1\nname: r\nmodel: {model}\n"
    (recipes / "bad-method.yaml").write_text(
        head + "stages:\n  - {name: q, quantize: {method: hqq, bits: 4}}\n"
    )
    offline_eval = "data:\n  eval: {source: 'hf:wikitext:wikitext-2-raw-v1:test'}\n"
    (recipes / "offline-eval.yaml").write_text(
        head + offline_eval + "stages:\n  - {name: q, quantize: {method: fp16}}\n"
    )
    (recipes / "missing-model.yaml").write_text(
        "version: 1\nname: r\nmodel: ./nowhere\nstages:\n  - {name: q, quantize: {method: fp16}}\n"
    )
    one = head + "stages:\n  - {name: q, quantize: {method: fp16}}\n"
    (recipes / "gate-typo.yaml").write_text(one + "eval: {suite: quick, gates: ['kld.meen<=0.1']}\n")
    (recipes / "gate-unmeasured.yaml").write_text(
        one + "eval: {suite: quick, metrics: [ppl], gates: ['kld.mean<=0.1']}\n"
    )
    (recipes / "stage-gate-task.yaml").write_text(
        head + "stages:\n  - {name: q, quantize: {method: fp16}, gates: ['tasks.nope.recovery>=0.9']}\n"
        "eval: {suite: quick}\n"
    )
    (recipes / "baseline-gates.yaml").write_text(
        head + "stages:\n  - {name: q, quantize: {method: fp16}, gates: ['ppl<=9']}\n"
        "  - {name: r, quantize: {method: rtn, bits: 4}}\neval: {suite: quick, baseline: q}\n"
    )
    (recipes / "no-metrics.yaml").write_text(one + "eval: {suite: quick, metrics: []}\n")
    (recipes / "cost-unpriced.yaml").write_text(
        one + "eval: {suite: quick, gates: ['cost.usd_per_1m_tokens<=1']}\n"
    )
    (recipes / "bad-device.yaml").write_text(one + "eval: {suite: quick, device: tpu}\n")
    paths.update({f"recipe_{p.stem.replace('-', '_')}": p for p in recipes.iterdir()})
    (root / "gated-suite.yaml").write_text("metrics: [ppl, kld]\ngates: ['kld.mean<=0.1']\n")
    paths["gated_suite"] = root / "gated-suite.yaml"
    (root / "no-metrics-suite.yaml").write_text("metrics: []\n")
    paths["no_metrics_suite"] = root / "no-metrics-suite.yaml"
    (root / "bad-report.json").write_text('{"results": [{"name": "x"}]}')
    paths["bad_report"] = root / "bad-report.json"
    empty = root / "empty-eval"
    empty.mkdir()
    (empty / "eval.json").write_text('{"schema_version": 1, "entries": {}}')
    paths["empty_eval"] = empty
    suite = root / "bad-suite.yaml"
    suite.write_text("metrics: [ppl, telepathy]\n")
    paths["bad_suite"] = suite
    not_json = root / "report.json"
    not_json.write_text("{ nope")
    paths["not_json"] = not_json

    # Inputs with the user's files around them: a model inside a folder, a GGUF inside a folder.
    nest = root / "nest"
    nest.mkdir()
    (nest / "notes.txt").write_text("the user's notes\n")
    paths["nest"], paths["nested_model"] = nest, _copy(model, nest / "model")
    paths["gguf_artifact"] = export_gguf(model, root / "gguf-artifact", type="f16")
    gguf_dir = root / "ggufs"
    gguf_dir.mkdir()
    shutil.copy2(next(paths["gguf_artifact"].glob("*.gguf")), gguf_dir / "m.gguf")
    (gguf_dir / "notes.txt").write_text("the user's notes\n")
    paths["gguf_dir"], paths["gguf_file"] = gguf_dir, gguf_dir / "m.gguf"
    users = root / "users-folder"
    users.mkdir()
    (users / "thesis.tex").write_text("\\documentclass{article}\n")
    paths["users_folder"] = users
    paths["a_file"] = texts / "tiny.txt"
    paths.update(_export_fixtures(model, root, paths["gguf_file"]))
    paths.update(_file_fixtures(model, root))
    return paths


def _file_fixtures(model: Path, root: Path) -> dict[str, Path]:
    """Copies of the model whose tokenizer, config, manifest or weights file is not what its name says."""
    fast = json.loads((model / "tokenizer.json").read_text())
    paths = {}

    def copy(name: str, file: str, content: str | bytes | None) -> None:
        target = _copy(model, root / name.replace("_", "-"))
        if isinstance(content, bytes):
            (target / file).write_bytes(content)
        elif content is not None:
            (target / file).write_text(content)
        else:
            (target / file).unlink()
        paths[name] = target

    copy("tok_not_json", "tokenizer.json", "{not json")
    copy("tok_no_model", "tokenizer.json", json.dumps({**fast, "model": {"type": "BPE"}}))
    copy(
        "tok_bad_vocab",
        "tokenizer.json",
        json.dumps({**fast, "model": {**fast["model"], "vocab": {"a": "b"}}}),
    )
    copy("tok_config_list", "tokenizer_config.json", "[]")
    copy("tok_missing", "tokenizer.json", None)
    copy("tok_unknown_class", "tokenizer.json", None)
    unknown = paths["tok_unknown_class"]
    (unknown / "vocab.json").write_text(json.dumps(fast["model"]["vocab"]))
    (unknown / "merges.txt").write_text("#version: 0.2\n")
    (unknown / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "NoSuchTokenizer"}))
    copy("binary_config", "config.json", bytes(range(128, 256)) * 8)
    copy("bad_manifest", "compress.json", "{not json")
    copy("weights_dir", WEIGHTS, None)
    (paths["weights_dir"] / WEIGHTS).mkdir()
    (root / "texts" / "bad.jsonl").write_text("{not json\n")
    paths["bad_jsonl"] = root / "texts" / "bad.jsonl"
    (root / "wrong-shape.json").write_text('{"entries": 5}')
    paths["wrong_shape_report"] = root / "wrong-shape.json"
    (root / "empty-result.json").write_text('{"results": [{}]}')
    paths["empty_result_report"] = root / "empty-result.json"
    return paths


def _variant(model: Path, target: Path, **changes) -> Path:
    """A copy of `model` whose config.json says something else."""
    _copy(model, target)
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def _export_fixtures(model: Path, root: Path, good: Path) -> dict[str, Path]:
    """Models llama.cpp would not run as transformers does, and GGUF sources damaged in every way a
    converter or a download can damage them."""
    from transformers import AutoModelForCausalLM

    paths = {
        "model_gelu": _variant(model, root / "model-gelu", hidden_act="gelu"),
        "model_rope_scaled": _variant(
            model,
            root / "model-rope-scaled",
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        ),
    }
    short = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    short.resize_token_embeddings(1000)  # fewer embedding rows than the demo tokenizer's 1024 tokens
    short.save_pretrained(root / "model-short-vocab")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(model / name, root / "model-short-vocab" / name)
    paths["model_short_vocab"] = root / "model-short-vocab"
    bad = root / "damaged-ggufs"
    bad.mkdir()
    damaged = {
        "missing_tensor": {"drop_tensors": ("blk.1.attn_q.weight",)},
        "no_block_count": {"drop_keys": ("llama.block_count",)},
        "no_head_count": {"drop_keys": ("llama.attention.head_count",)},
        "no_tokens": {"drop_keys": ("tokenizer.ggml.tokens",)},
        "short_block_count": {"set_keys": {"llama.block_count": 2}},
        "wrong_vocab_size": {"set_keys": {"llama.vocab_size": 2048}},
    }
    for name, change in damaged.items():
        paths[f"gguf_{name}"] = rewrite_gguf(good, bad / f"{name}.gguf", **change)
    (bad / "garbage.gguf").write_bytes(b"\x00" * 4096)
    paths["gguf_garbage"] = bad / "garbage.gguf"
    two = root / "two-ggufs"
    two.mkdir()
    shutil.copy2(good, two / "a.gguf")
    shutil.copy2(good, two / "b.gguf")
    paths["gguf_two"] = two
    return paths


# (argv with {fixture} placeholders and {out}, fragment of the one error line)
CASES: list[tuple[str, str]] = [
    # quantize: the model
    ("quantize {nowhere} -m rtn --out {out}", "does not exist"),
    ("quantize {text_tiny} -m rtn --out {out}", ""),
    ("quantize {no_config} -m rtn --out {out}", "no config.json"),
    ("quantize {bad_config} -m rtn --out {out}", "not valid JSON"),
    ("quantize {no_weights} -m rtn --out {out}", ""),
    ("quantize {truncated} -m rtn --out {out}", "truncated or corrupt"),
    ("quantize {truncated} -m fp16 --out {out}", "truncated or corrupt"),
    ("quantize {truncated} -m int8 --out {out}", "truncated or corrupt"),
    ("quantize {garbage} -m rtn --out {out}", "truncated or corrupt"),
    ("quantize {garbage} -m rtn --max-memory 1GB --out {out}", "truncated or corrupt"),
    ("quantize {missing_tensor} -m rtn --out {out}", "lacks 'model.layers.0.mlp.up_proj.weight'"),
    ("quantize {missing_tensor} -m fp16 --out {out}", "lacks 'model.layers.0.mlp.up_proj.weight'"),
    ("quantize {missing_tensor} -m nf4 --out {out}", "lacks 'model.layers.0.mlp.up_proj.weight'"),
    ("quantize {extra_tensor} -m rtn --out {out}", "model.layers.0.surprise"),
    ("quantize {nan} -m rtn --out {out}", "NaN or Inf"),
    ("quantize {inf} -m fp16 --out {out}", "NaN or Inf"),
    ("quantize {nan} -m rtn --max-memory 1GB --out {out}", "NaN or Inf"),
    ("quantize {artifact} -m gptq --out {out}", "already quantized"),
    # quantize: options
    ("quantize {model} -m gptq --bits 5 --out {out}", "supports --bits"),
    ("quantize {model} --bits 1 --out {out}", "no quantization method for --bits 1"),
    ("quantize {model} -m rtn --group-size 0 --out {out}", "--group-size"),
    ("quantize {model} -m rtn --group-size 100 --out {out}", "does not divide"),
    ("quantize {model} -m gptq --damp-percent 2 --out {out}", "damp"),
    ("quantize {model} -m gptq --calib-samples 0 --calib {text_tiny} --out {out}", "--calib-samples"),
    ("quantize {model} -m gptq --seq-len 4 --out {out}", "--seq-len"),
    ("quantize {model} -m gptq --calib-dtype float8 --out {out}", "--calib-dtype"),
    ("quantize {model} -m rtn --max-memory lots --out {out}", "--max-memory"),
    ("quantize {model} -m nf4 --max-memory 1GB --out {out}", "streams blocks for rtn, gptq and awq"),
    ("quantize {model} -m nf4 --compute-dtype float64 --out {out}", "--compute-dtype"),
    ("quantize {model} -m rtn --device tpu9 --out {out}", "device"),
    ("quantize {model} -m rtn --device cuda --out {out}", "CUDA is not available"),
    ("quantize {model} -m rtn --out {model}", "is the input"),
    ("quantize {model} -m rtn --out {artifact}", "already exists; pass --force"),
    ("quantize {model} -m fp16 --out {text_tiny} --force", "not a directory"),
    ("quantize {model} -m rtn --out {long_name}", "too long"),
    # quantize: calibration text
    ("quantize {model} -m gptq --calib {text_random} --out {out}", "is not text"),
    ("quantize {model} -m gptq --calib {text_empty} --out {out}", "is empty"),
    ("quantize {model} -m gptq --calib {text_tiny} --out {out}", "fewer than"),
    ("quantize {model} -m gptq --calib {nowhere} --out {out}", ""),
    ("quantize {model} -m gptq --calib hf:wikitext:wikitext-2-raw-v1:train --out {out}", "offline"),
    ("quantize {model} -m awq --calib {text_random} --out {out}", "is not text"),
    # prune
    ("prune {model} --out {out}", "nothing to prune"),
    ("prune {model} --mlp 0.001 --out {out}", "nothing to prune"),
    ("prune {model} --mlp 1.5 --out {out}", "--mlp"),
    ("prune {model} --mlp 0.5 --mlp-size 10 --out {out}", "not both"),
    ("prune {model} --layers 99 --out {out}", "cannot remove every layer"),
    ("prune {model} --layers-keep 99 --out {out}", "cannot keep 99 layers"),
    ("prune {model} --heads-keep 99 --out {out}", "cannot keep 99"),
    ("prune {nan} --mlp 0.5 --importance magnitude --out {out}", "NaN or Inf"),
    ("prune {missing_tensor} --mlp 0.5 --out {out}", "lacks"),
    ("prune {truncated} --mlp 0.5 --out {out}", "truncated or corrupt"),
    ("prune {bad_config} --mlp 0.5 --out {out}", "not valid JSON"),
    ("prune {model} --mlp 0.5 --calib {text_random} --out {out}", "is not text"),
    ("prune {artifact} --mlp 0.5 --out {out}", "already quantized"),
    # distill: every argument checked before the teacher generates
    ("distill --teacher {model} --out {out}", "give a student"),
    (
        "distill --teacher {model} --student {model} --student-config num_hidden_layers=1 --out {out}",
        "not both",
    ),
    (
        "distill --teacher {model} --student-config num_hidden_layers=99 --no-eval --out {out}",
        "cannot keep 99",
    ),
    ("distill --teacher {model} --student-config wings=2 --no-eval --out {out}", "does not know 'wings'"),
    (
        "distill --teacher {model} --student {model} --teacher-logits offline --no-eval --out {out}",
        "store-topk",
    ),
    ("distill --teacher {model} --student {model} --out {out}", "--no-eval"),
    ("distill --teacher {model} --student {stories} --no-eval --out {out}", "tokenizer"),
    ("distill --teacher {nan} --student {model} --no-eval --out {out}", ""),
    ("distill --teacher {model} --student {model} --eval-data {text_random} --out {out}", "is not text"),
    ("distill --teacher {artifact} --student {model} --no-eval --out {out}", "already quantized"),
    ("distill --student {model} --out {out}", "give the teacher"),
    ("distill train --teacher {model} --student {model} --out {out}", "--data"),
    ("distill train --teacher {model} --student {model} --data {nowhere} --no-eval --out {out}", ""),
    ("distill generate --teacher {model} --prompts {text_random} --out {out}", "is not text"),
    ("distill generate --teacher {model} --prompts {text_prompts} --out {out}", "no 'text' column"),
    # eval and compare
    ("eval {artifact} --baseline {nowhere} --metrics ppl --data {text_tiny}", ""),
    ("eval {artifact} --baseline {model} --metrics telepathy", "unknown metric"),
    ("eval {artifact} --baseline {model} --suite {bad_suite}", "telepathy"),
    ("eval {artifact} --baseline {model} --suite nosuchsuite", "not found"),
    ("eval {artifact} --baseline {model} --metrics ppl --data {text_random}", "is not text"),
    ("eval {artifact} --baseline {model} --metrics ppl --data {text_tiny}", "fewer than one window"),
    ("eval {artifact} --baseline {model} --metrics ppl --gate nonsense", "gate"),
    ("eval {truncated} --baseline {model} --metrics ppl --data {text_tiny}", ""),
    ("compare {not_json}", ""),
    ("compare {nowhere}", "does not exist"),
    ("compare {model}", "has no eval results"),
    # inspect
    ("inspect {nowhere}", "not a directory"),
    ("inspect {no_config}", "no config.json"),
    ("inspect {bad_config}", "not valid JSON"),
    ("inspect {truncated}", "truncated or corrupt"),
    ("inspect {garbage}", "truncated or corrupt"),
    # run (recipes)
    ("run {nowhere}", ""),
    ("run {recipe_not_yaml}", "YAML"),
    ("run {recipe_unknown_key}", "bogus"),
    ("run {recipe_no_stages}", "stage"),
    ("run {recipe_bad_method}", "stages[0].quantize.method"),
    ("run {recipe_missing_model}", ""),
    ("run {recipe_offline_eval}", "offline"),
    ("run {recipe_no_stages} --set nonsense", ""),
    # data
    ("data {text_random} --tokenizer {model}", "is not text"),
    ("data {text_empty} --tokenizer {model}", "is empty"),
    ("data {nowhere} --tokenizer {model}", ""),
    ("data {text_tiny} --tokenizer {nowhere}", ""),
    ("data {text_tiny} --tokenizer {model} --samples 0", "samples"),
]


#: What a row that must succeed expects in place of an error fragment.
OK = None

# Paths: what a command may write, replace or remove (ownership, not names). {out_ours} is `out`
# holding an artifact we wrote, {out_users} `out` holding the user's files.
PATH_COMMANDS = {
    "quantize": "quantize {input} -m fp16",
    "prune": "prune {input} --mlp 0.5 --importance magnitude",
    "sparsify": "sparsify {input} --importance magnitude",
    "export": "export gguf {input} --type f16",
    "distill": "distill --teacher {input} --student-config num_hidden_layers=1 --samples 4 --no-eval",
}
PATH_CASES: list[tuple[str, str | None]] = [
    row
    for command in PATH_COMMANDS.values()
    for row in [
        (command.format(input="{nested_model}") + " --out {nested_model} --force", "is the input"),
        (command.format(input="{nested_model}") + " --out {nest} --force", "contains the input"),
        (command.format(input="{nested_model}") + " --out {nested_model}/sub", "lies inside the input"),
        (command.format(input="{model}") + " --out {users_folder} --force", "did not write"),
        (command.format(input="{model}") + " --out {out_users} --force", "did not write"),
        (command.format(input="{model}") + " --out {out_ours}", "already exists; pass --force"),
        (command.format(input="{model}") + " --out {a_file}/sub", "is a file, not a directory"),
        (command.format(input="{model}") + " --out . --force", "did not write"),
        (command.format(input="{model}") + " --out .. --force", "did not write"),
        (command.format(input="{gguf_file}") + " --out {gguf_dir} --force", "contains the input"),
    ]
] + [
    ("quantize {gguf_file} -m fp16 --out {gguf_file}", "is the input"),
    ("quantize {model} -m fp16 --out {symlink_out} --force", "symbolic link"),
    ("prune {model} --mlp 0.5 --calib {out}/calib.txt --out {out}", "does not exist"),
    ("distill generate --teacher {nested_model} --samples 4 --out {nest}", "contains the input"),
    ("distill generate --teacher {model} --samples 4 --out {users_folder}", "did not write"),
    ("distill train --teacher {model} --student {nested_model} --data {nowhere} --out {nest}", ""),
    (
        "distill --teacher {model} --student-config num_hidden_layers=1 --samples 4 --no-eval --out {out}",
        "work directory",
    ),
    (
        "distill --teacher {model} --student {model} --no-eval --generations {users_folder} --out {nowhere}",
        "did not write",
    ),
    # reports: never onto (or into) an input
    ("eval {artifact} --baseline {model} --metrics size --json {artifact}/model.safetensors", "--json"),
    (
        "eval {gguf_artifact} --baseline {model} --metrics size --json {gguf_artifact}/gguf-artifact.gguf",
        "lies inside the input",
    ),
    ("eval {artifact} --baseline {model} --metrics size --junit {model}/model.safetensors", "--junit"),
    ("eval {artifact} --baseline {model} --metrics size --markdown {artifact}/config.json", "--markdown"),
    ("eval {artifact} --metrics size --json {model}/config.json", "lies inside the input"),
    (
        "eval {artifact} --baseline {model} --metrics ppl --data {text_tiny} --json {text_tiny}",
        "is the input",
    ),
    ("eval {artifact} --baseline {model} --metrics size --json {users_folder}", "is a directory"),
    ("eval {artifact} --baseline {model} --metrics size --json {a_file}/x.json", "is a file, not"),
    ("compare {artifact} --plot {artifact}/model.safetensors", "--plot"),
    ("compare {artifact} --plot {nowhere}", ""),
    ("compare {artifact} {gguf_artifact} --plot {gguf_artifact}/plot.png", "lies inside the input"),
    # recipes: the run directory is apart from every input and holds only what runs write
    ("run {recipe_fp16} --out {model}", "is the input"),
    ("run {recipe_fp16} --out {users_folder}", "did not write"),
    ("run {recipe_fp16} --out {out_users}", "did not write"),
    ("run {recipe_fp16} --out {a_file}/run", "is a file, not"),
    ("run {recipe_fp16} --out {symlink_out}", "not a directory"),
    ("run {recipe_fp16} --out {recipes_dir}", "contains the input"),
    # what must succeed, with every file of the user's untouched around it
    ("quantize {model} -m fp16 --out {out}", OK),
    ("quantize {model} -m rtn --bits 4 --out {out_ours} --force", OK),
    ("quantize {model} -m fp16 --out {out_empty} --force", OK),
    ("quantize {gguf_file} -m fp16 --out {out}", OK),
    ("prune {model} --mlp 0.5 --importance magnitude --out {out}", OK),
    ("sparsify {model} --importance magnitude --out {out}", OK),
    ("export gguf {model} --type f16 --out {out}", OK),
    ("export gguf {artifact} --type f16 --out {out_ours} --force", OK),
    (
        "eval {artifact} --baseline {model} --metrics size --data {text_long} --json {out}/eval/report.json",
        OK,
    ),
    ("eval {gguf_artifact} --baseline {model} --metrics size --data {text_long} --markdown {out}/r.md", OK),
    ("data {text_long} --tokenizer {model} --samples 4", OK),
    ("inspect {artifact}", OK),
    ("inspect {gguf_artifact}", OK),
    ("run {recipe_fp16} --out {out}", OK),
]
CASES += PATH_CASES

# eval, compare and run: gates against what will be measured, options that cannot apply, devices,
# broken weights: all refused before any model is scored (`compress/evaluate/gates.py`).
EVAL_CASES: list[tuple[str, str | None]] = [
    ("eval {artifact} --baseline {model} --metrics ppl --gate kld.mean<=0.1", "metric 'kld' is not measured"),
    ("eval {artifact} --baseline {model} --gate kld.meen<=0.1", "(did you mean 'mean'?)"),
    ("eval {artifact} --baseline {model} --metrics ppl --gate same_top1>=0.9", "(which gives same_top1)"),
    ("eval {artifact} --baseline {model} --metrics ppl,size --gate memory.weight_bytes<=1e9", "'memory'"),
    ("eval {artifact} --baseline {model} --suite quick --gate tasks.hellaswag.recovery>=0.9", "'hellaswag'"),
    ("eval {artifact} --baseline {model} --suite quick --gate tasks.*.recovry>=0.9", "'recovery'"),
    ("eval {artifact} --baseline {model} --suite quick --gate tasks.stdlib*.recovery>=0.9", "whole key"),
    ("eval {artifact} --baseline {model} --gate tasks.*.recovery>=0.9", "no lm-eval tasks are requested"),
    ("eval {artifact} --baseline {model} --gate cost.usd_per_1m_tokens<=1", "a price per hour"),
    ("eval {artifact} --baseline {model} --gate speed.decode_tok_s.4>1", "available: 1, 8"),
    ("eval {artifact} --baseline {model} --gate speed.device>=1", "is a label, not a number"),
    ("eval {artifact} --baseline {model} --gate kld<=0.1", "'kld' holds several values"),
    ("eval {artifact} --baseline {model} --gate same_top1.mean>=0.9", "is a single value"),
    ("eval {artifact} --baseline {model} --gate kld..mean<=0.1", "has an empty key"),
    ("eval {artifact} --baseline {model} --suite {gated_suite} --metrics ppl", "'kld' is not measured"),
    ("eval {artifact} --baseline {model} --suite {no_metrics_suite}", "no metrics to measure"),
    ("eval {artifact} --baseline {model} --metrics ,", "--metrics is empty"),
    ("eval {artifact} --baseline {model} --tasks ,", "--tasks is empty"),
    ("eval {artifact} --baseline {model} --metrics ppl --tasks stdlib_next_line", "tasks metric is not"),
    ("eval {artifact} --baseline {model} --metrics ppl,tasks", "no task is named"),
    ("eval {artifact} --baseline {model} --price-per-hour 0", "must be a positive number"),
    ("eval {artifact} --baseline {model} --price-per-hour -1", "must be a positive number"),
    ("eval {artifact} --baseline {model} --metrics ppl --price-per-hour 2", "prices the cost metric"),
    ("eval {artifact} --baseline {model} --device tpu", "unknown device 'tpu'"),
    ("eval {artifact} --baseline {model} --metrics ppl --device mps", "device 'mps' is not available"),
    ("eval {artifact} --baseline {model} --metrics ppl --device meta", "device 'meta' is not available"),
    ("eval {artifact} --baseline {model} --metrics ppl --device cuda:99", "device 'cuda:99'"),
    ("eval {nan} --baseline {model} --suite quick --metrics ppl", "'model.layers.0.mlp.down_proj.weight'"),
    (
        "eval {artifact} --baseline {nan} --suite quick --metrics ppl,kld",
        "'model.layers.0.mlp.down_proj.weight'",
    ),
    (
        "eval {inf} --baseline {model} --suite quick --metrics kld --no-cache",
        "'model.layers.1.self_attn.o_proj",
    ),
    ("compare {text_prompts}", "neither an eval report nor an artifact's eval.json"),
    ("compare {text_random}", "is not a JSON results file"),
    ("compare {bad_report}", "is not a valid eval report"),
    ("compare {empty_eval}", "holds no results"),
    ("run {recipe_gate_typo}", "eval.gates[0]: gate 'kld.meen<=0.1'"),
    ("run {recipe_gate_unmeasured}", "metric 'kld' is not measured (metrics: ppl)"),
    ("run {recipe_stage_gate_task}", "stages[0].gates[0]"),
    ("run {recipe_baseline_gates}", "stage 'q' is the eval baseline"),
    ("run {recipe_no_metrics}", "eval.metrics: no metrics to measure"),
    ("run {recipe_cost_unpriced}", "a price per hour"),
    ("run {recipe_gate_typo} --set eval.gates=[kld.p98<=1]", "--set eval.gates=[kld.p98<=1]"),
    ("run {recipe_bad_device}", "unknown device 'tpu'"),
]
CASES += EVAL_CASES

# export gguf and GGUF sources: what llama.cpp would not run as the source does, options that
# would do nothing, damaged files (`compress/export/`, `compress/gguf_source.py`).
EXPORT_CASES: list[tuple[str, str | None]] = [
    ("export gguf {model} --type f16 --calib {text_tiny} --out {out}", "--type f16 does not run"),
    (
        "export gguf {model} --type bf16 --calib {text_tiny} --out {out}",
        "--calib weights llama.cpp's quantizer",
    ),
    ("export gguf {model} --type f32 --threads 2 --out {out}", "--threads sizes llama.cpp's quantizer"),
    (
        "export gguf {model} --type q8_0 --seq-len 128 --out {out}",
        "--seq-len sets how --calib text is sampled",
    ),
    ("export gguf {model} --type q4_k_m --calib-samples 8 --out {out}", "does nothing without --calib"),
    ("export gguf {model} --type f16 --seed 1 --out {out}", "--seed sets how --calib text is sampled"),
    ("export gguf {model} --type f16 --threads 0 --out {out}", "--threads"),
    ("export gguf {model} --type q4_k_m --calib {text_tiny} --seq-len 4 --out {out}", "--seq-len"),
    ("export gguf {model} --type q9 --out {out}", "unknown GGUF type 'q9'"),
    ("export gguf {model} --type f16 --out {out}.gguf", "--out names the artifact directory"),
    (
        "export gguf {artifact} --type q4_0 --calib {text_tiny} --out {out}",
        "packed artifact's q4_0 blocks skip",
    ),
    ("export gguf {artifact} --type q4_k_m --out {out}", "without rounding its weights again"),
    ("export gguf {artifact} --type q4_0 --out {out}", "does not hold exactly"),
    ("export gguf {model_gelu} --type f16 --out {out}", "this one uses 'gelu'"),
    ("export gguf {model_rope_scaled} --type f16 --out {out}", "plain RoPE"),
    ("export gguf {model_short_vocab} --type f16 --out {out}", "past the model's 1000 embedding rows"),
    ("export gguf {gguf_missing_tensor} --type f16 --out {out}", "(blk.1.attn_q.weight)"),
    ("quantize {gguf_missing_tensor} -m fp16 --out {out}", "blk.1.attn_q.weight"),
    (
        "export gguf {gguf_no_block_count} --type f16 --out {out}",
        "lacks the metadata key 'llama.block_count'",
    ),
    ("quantize {gguf_no_block_count} -m rtn --out {out}", "'llama.block_count'"),
    ("export gguf {gguf_no_head_count} --type f16 --out {out}", "'llama.attention.head_count'"),
    ("export gguf {gguf_no_tokens} --type f16 --out {out}", "'tokenizer.ggml.tokens'"),
    ("export gguf {gguf_short_block_count} --type f16 --out {out}", "has no place for (blk.2."),
    ("export gguf {gguf_wrong_vocab_size} --type f16 --out {out}", "tensor 'token_embd.weight' holds"),
    ("export gguf {gguf_garbage} --type f16 --out {out}", "not a readable GGUF file"),
    ("export gguf {gguf_two} --type f16 --out {out}", "holds several GGUF files (a.gguf, b.gguf)"),
    ("inspect {gguf_two}", "holds several GGUF files"),
    ("export gguf {model} --type q4_k_m --calib {text_random} --out {out}", "is not text"),
    ("export gguf {model} --type q4_k_m --calib {text_empty} --out {out}", "is empty"),
    ("export gguf {model} --type q4_k_m --calib {nowhere} --out {out}", "does not exist"),
    ("prune {gguf_wrong_vocab_size} --mlp 0.5 --out {out}", "tensor 'token_embd.weight' holds"),
    ("sparsify {gguf_no_tokens} --out {out}", "'tokenizer.ggml.tokens'"),
    ("eval {gguf_missing_tensor} --baseline {model} --metrics size", "(blk.1.attn_q.weight)"),
]
CASES += EXPORT_CASES

# Options that cannot apply to the chosen method, files that are not what their names say, and OS
# errors the user causes: exit 2, never 3 (`compress/errors.py`, each technique's config).
OPTION_CASES: list[tuple[str, str | None]] = [
    ("quantize {model} -m rtn --group-fallback --out {out}", "--group-fallback only changes an explicit"),
    ("quantize {model} -m rtn --group-size -1 --group-fallback --out {out}", "is -1 (whole rows)"),
    ("quantize {model} -m rtn --act-order --out {out}", "--act-order has no effect with --method rtn"),
    ("quantize {model} -m awq --no-act-order --out {out}", "--act-order has no effect with --method awq"),
    ("quantize {model} -m fp16 --calib {text_tiny} --out {out}", "--calib has no effect with --method fp16"),
    ("quantize {model} -m int8 --calib-samples 8 --out {out}", "--calib-samples has no effect"),
    ("quantize {model} -m nf4 --seq-len 512 --out {out}", "--seq-len has no effect with --method nf4"),
    ("quantize {model} -m rtn --seed 3 --out {out}", "--seed has no effect with --method rtn"),
    ("quantize {model} -m rtn --calib-dtype float32 --out {out}", "--calib-dtype has no effect"),
    ("quantize {model} -m rtn --damp-percent 0.1 --out {out}", "--damp-percent has no effect"),
    (
        "quantize {model} -m gptq --double-quant --out {out}",
        "--double-quant has no effect with --method gptq",
    ),
    (
        "quantize {model} -m int8 --double-quant --out {out}",
        "--double-quant has no effect with --method int8",
    ),
    ("quantize {model} -m int8 --compute-dtype float16 --out {out}", "--compute-dtype has no effect"),
    ("quantize {model} -m nf4 --sym --out {out}", "--sym/--asym has no effect with --method nf4"),
    ("quantize {model} -m fp16 --group-size 32 --out {out}", "--group-size has no effect with --method fp16"),
    ("quantize {model} -m bf16 --keep-dtype --out {out}", "--keep-dtype has no effect with --method bf16"),
    ("quantize {bad_manifest} -m rtn --out {out}", "compress.json' is not valid JSON"),
    ("quantize {binary_config} -m rtn --out {out}", "config.json' is not UTF-8 text"),
    ("quantize {tok_not_json} -m gptq --calib {text_long} --out {out}", "tokenizer.json' is not valid JSON"),
    (
        "quantize {tok_bad_vocab} -m awq --calib {text_long} --out {out}",
        "does not describe a usable tokenizer",
    ),
    ("quantize {weights_dir} -m rtn --out {out}", "Is a directory"),
    ("prune {model} --mlp 0.5 --head-grouping groups --out {out}", "--head-grouping groups has no effect"),
    (
        "prune {model} --heads 0.25 --layer-importance loss --out {out}",
        "--layer-importance loss ranks blocks",
    ),
    ("prune {tok_not_json} --mlp 0.5 --out {out}", "tokenizer.json' is not valid JSON"),
    ("prune {bad_manifest} --mlp 0.5 --importance magnitude --out {out}", "compress.json' is not valid JSON"),
    ("prune {binary_config} --mlp 0.5 --out {out}", "config.json' is not UTF-8 text"),
    (
        "sparsify {model} --pattern 2:4 --sparsity 0.3 --out {out}",
        "--sparsity 0.3 disagrees with --pattern 2:4",
    ),
    (
        "sparsify {model} --pattern 4:8 --sparsity 0.75 --out {out}",
        "--sparsity 0.75 disagrees with --pattern 4:8",
    ),
    ("sparsify {model} --importance magnitude --calib {text_tiny} --out {out}", "--calib has no effect"),
    (
        "sparsify {model} --importance magnitude --calib-samples 8 --out {out}",
        "--calib-samples has no effect",
    ),
    ("sparsify {model} --importance magnitude --seed 2 --out {out}", "--seed has no effect"),
    ("sparsify {tok_config_list} --out {out}", "holds a JSON list, not an object"),
    ("sparsify {bad_manifest} --importance magnitude --out {out}", "compress.json' is not valid JSON"),
    (
        "distill --teacher {model} --student {model} --loss kl --alpha 0.3 --no-eval --out {out}",
        "--alpha weighs",
    ),
    (
        "distill --teacher {model} --student {model} --loss ce --temperature 2 --no-eval --out {out}",
        "softens",
    ),
    (
        "distill --teacher {model} --student {model} --student-init random --no-eval --out {out}",
        "--student-init",
    ),
    ("distill --teacher {model} --student {model} --no-eval --suite quick --out {out}", "--suite chooses"),
    (
        "distill --teacher {model} --student {model} --no-eval --eval-data {text_tiny} --out {out}",
        "--eval-data",
    ),
    (
        "distill generate --teacher {model} --greedy --top-p 0.9 --out {out}",
        "--top-p has no effect with --greedy",
    ),
    ("distill generate --teacher {model} --greedy --samples-per-prompt 4 --out {out}", "needs --sample"),
    (
        "distill train --teacher {model} --student {model} --data {nowhere} --loss ce --temperature 3 "
        "--out {out}",
        "--temperature softens the KL term",
    ),
    ("distill generate --teacher {tok_not_json} --out {out}", "tokenizer.json' is not valid JSON"),
    ("data {text_tiny} --tokenizer {tok_not_json}", "tokenizer.json' is not valid JSON"),
    ("data {text_tiny} --tokenizer {tok_no_model}", "does not describe a usable tokenizer"),
    ("data {text_tiny} --tokenizer {tok_config_list}", "holds a JSON list, not an object"),
    (
        "data {text_tiny} --tokenizer {tok_unknown_class}",
        "'NoSuchTokenizer', which transformers does not know",
    ),
    ("data {text_tiny} --tokenizer {tok_missing}", "has no tokenizer files"),
    ("data {bad_jsonl} --tokenizer {model}", "JSON parse error"),
    ("inspect {binary_config}", "config.json' is not UTF-8 text"),
    ("inspect {weights_dir}", "Is a directory"),
    ("compare {wrong_shape_report}", ""),
    ("compare {empty_result_report}", ""),
]
CASES += OPTION_CASES

#: Files the harness adds to an artifact it scores (its results and the card's table): ours to change.
HARNESS_FILES = ("eval.json", "README.md")


def _hashes(roots: list[Path], skip: Path, memo: dict) -> dict[str, str]:
    """sha256 of every file (and the target of every link) under `roots`, by path; `skip` excluded.
    Content is re-read only when a file's inode, size or mtime moved."""
    found: dict[str, str] = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            if path == skip or skip in path.parents:
                continue
            if path.is_symlink():
                found[str(path)] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[str(path)] = "dir"
            elif not (path.name in HARNESS_FILES and (path.parent / "compress.json").is_file()):
                stat = path.stat()
                key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if key not in memo:
                    memo[key] = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path)] = memo[key]
    return found


def _users_tree(tmp_path: Path, artifact: Path) -> None:
    """Siblings of `out` that merely look like ours, and a working directory of the user's files."""
    old = tmp_path / "out.old-v1"
    shutil.copytree(artifact, old)  # a backup of an artifact: it holds our manifest, and is theirs
    staging = tmp_path / "out.tmp-keep"
    staging.mkdir()
    (staging / "keep.txt").write_text("mine")
    month_ago = time.time() - 30 * 86400
    os.utime(staging, (month_ago, month_ago))
    (tmp_path / "out.work").mkdir()
    (tmp_path / "out.work" / "notes.txt").write_text("mine")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "notes.txt").write_text("mine")


_MEMO: dict = {}


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[argv for argv, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    broken, tmp_path, run_cli, monkeypatch, argv, fragment
):
    out = tmp_path / "out"
    _users_tree(tmp_path, broken["artifact"])
    if "{out_ours}" in argv:
        shutil.copytree(broken["artifact"], out)
    if "{out_users}" in argv:
        out.mkdir()
        (out / "thesis.tex").write_text("mine")
    if "{out_empty}" in argv:
        out.mkdir()
    if "{symlink_out}" in argv:
        (tmp_path / "link-target").mkdir()
        (tmp_path / "link-target" / "mine.txt").write_text("mine")
        (tmp_path / "symlink-out").symlink_to(tmp_path / "link-target")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "fp16.yaml").write_text(
        f"version: 1\nname: r\nmodel: {broken['model']}\n"
        "stages:\n  - {name: h, quantize: {method: fp16}}\neval: {suite: quick, metrics: [size]}\n"
    )
    monkeypatch.chdir(tmp_path / "cwd")
    values = {
        **{name: str(path) for name, path in broken.items()},
        **{name: str(out) for name in ("out", "out_ours", "out_users", "out_empty")},
        "symlink_out": str(tmp_path / "symlink-out"),
        "recipe_fp16": str(recipes / "fp16.yaml"),
        "recipes_dir": str(recipes),
        "nowhere": str(tmp_path / "nowhere"),
        "long_name": str(tmp_path / ("x" * 300)),
        "stories": str(Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"),
    }
    produced = out if fragment is OK or "{out_ours}" in argv else tmp_path / "nowhere"
    protected = [broken["nest"].parent, broken["model"], tmp_path]
    before = _hashes(protected, produced, _MEMO)
    code, _, err = run_cli(*[part.format(**values) for part in argv.split()])
    if fragment is OK:
        assert code == 0, err
    else:
        assert_one_line_error(code, err, fragment)
    assert _hashes(protected, produced, _MEMO) == before
    if fragment is not OK and "{out_ours}" not in argv and "{out_users}" not in argv:
        assert not out.exists() or "{out_empty}" in argv


def test_the_matrix_is_large():
    assert len(CASES) >= 250


# --- kills at chosen moments, and concurrent writers: real processes -----------------------------------

#: Runs the CLI with a SIGKILL planted in one function: the process dies the moment that function is
#: called with a last positional argument whose text matches PATTERN, so a kill lands at an exact
#: point, not at a clock's.
PLANTED_KILL = """
import importlib, os, re, signal, sys
module, attribute, pattern, *argv = sys.argv[1:]
owner = importlib.import_module(module)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)

def planted(*args, **kwargs):
    if args and re.search(pattern, str(args[-1])):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

setattr(owner, name, planted)
from compress.cli import main
sys.exit(main(argv))
"""


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def _killed_at(target: str, pattern: str, *argv: object) -> None:
    """Run `compress ARGV`; kill it when `target` (module:attribute) is called with `pattern` last."""
    module, attribute = target.split(":")
    command = [sys.executable, "-c", PLANTED_KILL, module, attribute, pattern, *(str(a) for a in argv)]
    finished = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == -signal.SIGKILL, f"not killed: exit {finished.returncode} {finished.stderr}"


def _compress(*argv: object, **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "compress", *(str(a) for a in argv)]
    return subprocess.Popen(command, env=_environment(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(*processes: subprocess.Popen) -> list[tuple[int, str]]:
    return [(p.wait(timeout=600), p.communicate()[1].decode()) for p in processes]


def test_distill_killed_while_saving_a_checkpoint_resumes_from_the_last_complete_one(
    run_cli, demo, pruned, generations, tmp_path
):
    """The kill lands after checkpoint-20's weights and before its optimizer and trainer state."""
    out = tmp_path / "student"
    train = ("distill", "train", "--teacher", demo[0], "--student", pruned, "--data", generations,
             "--out", out, "--steps", "40", "--save-steps", "10", "--no-eval", "--lr", "1e-3")  # fmt: skip
    _killed_at("transformers:Trainer._save_optimizer_and_scheduler", "checkpoint-20$", *train)
    checkpoints = tmp_path / "student.work" / "checkpoints"
    assert (checkpoints / "checkpoint-10" / "trainer_state.json").is_file()
    assert any((checkpoints / "checkpoint-20").glob("*.safetensors"))
    assert not (checkpoints / "checkpoint-20" / "trainer_state.json").exists()
    assert not out.exists()  # no artifact from a killed run

    code, _, err = run_cli(*train)  # checkpoints exist: refuse to silently start over
    assert_one_line_error(code, err, "--resume")
    code, _, err = run_cli(*train, "--resume", "--lr", "5e-4")
    assert_one_line_error(code, err, "--resume", "lr=0.001")
    code, _, err = run_cli(*train, "--resume")
    assert code == 0, err
    assert "skipping checkpoint-20: it was not completely written" in err
    report = read_manifest(out).extra["distillation"]
    assert report["steps"] == 40 and report["resumed_from"] == "checkpoint-10"
    assert not (tmp_path / "student.work").exists() or not list(checkpoints.glob("checkpoint-*"))


def test_force_replace_killed_between_its_renames_is_restored_by_the_next_run(demo, run_cli, tmp_path):
    out = tmp_path / "q"
    quantize = ("quantize", demo[0], "-m", "rtn", "--bits", "4", "--out", out)
    assert run_cli(*quantize)[0] == 0
    before = (out / "compress.json").read_bytes()
    # staging.rename(q) is the second rename: the old artifact is already at q.old-*, nothing at q.
    _killed_at("pathlib:Path.rename", "/q$", *quantize, "--bits", "8", "--force")
    assert not out.exists() and len(list(tmp_path.glob("q.old-*"))) == 1

    code, _, err = run_cli(*quantize)
    assert_one_line_error(code, err.split("\n", 1)[-1], "already exists; pass --force")
    assert err.startswith(f"restored {out} from q.old-")
    assert (out / "compress.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_force_replace_killed_after_its_renames_is_tidied_by_the_next_run(demo, run_cli, tmp_path):
    out = tmp_path / "q"
    quantize = ("quantize", demo[0], "-m", "rtn", "--bits", "4", "--out", out)
    assert run_cli(*quantize)[0] == 0
    _killed_at("shutil:rmtree", r"/q\.old-", *quantize, "--bits", "8", "--force")
    assert read_manifest(out).parameters["bits"] == 8 and len(list(tmp_path.glob("q.old-*"))) == 1

    code, _, err = run_cli(*quantize, "--force")
    assert code == 0, err
    assert "removed" in err and "interrupted --force replace" in err
    assert read_manifest(out).parameters["bits"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_recipe_killed_while_publishing_a_stage_reruns_only_that_stage(demo, run_cli, tmp_path):
    """The kill lands with the int4 stage complete in its staging directory, just before publishing."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"version: 1\nname: k\nmodel: {demo[0]}\n"
        "stages:\n  - {name: fp16, quantize: {method: fp16}}\n"
        "  - {name: int4, from: base, quantize: {method: rtn, bits: 4}}\n"
        "eval: {suite: quick, metrics: [size]}\n"
    )
    run_dir = tmp_path / "run"
    _killed_at("compress.staging:_publish", "/int4$", "--quiet", "run", recipe, "--out", run_dir)
    assert not (run_dir / "int4").exists() and (run_dir / "fp16" / "compress.json").is_file()

    code, _, err = run_cli("run", recipe, "--out", run_dir)
    assert code == 0, err
    statuses = {s["name"]: s["status"] for s in json.loads((run_dir / "results.json").read_text())["stages"]}
    assert statuses == {"fp16": "cached", "int4": "ran"}
    assert not list(run_dir.rglob("*.tmp-*")), "the staging directory of the killed stage was left behind"


def test_two_quantize_processes_writing_one_out_both_finish_with_one_complete_artifact(demo, tmp_path):
    out = tmp_path / "q"
    results = _finish(*(_compress("quantize", demo[0], "-m", "gptq", "--bits", "4", "--calib-samples", "8",
                                  "--seq-len", "128", "--out", out) for _ in range(2)))  # fmt: skip
    assert [code for code, _ in results] == [0, 0], results
    assert read_manifest(out).parameters["method"] == "gptq"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_two_evals_filling_one_cold_baseline_store_both_finish(demo, tmp_path):
    cache = tmp_path / "cache"
    evaluate = ("--quiet", "eval", demo[0], "--baseline", demo[0], "--suite", "quick",
                "--metrics", "ppl,kld", "--max-tokens", "4096", "--no-cache")  # fmt: skip
    results = _finish(*(_compress(*evaluate, COMPRESS_CACHE_DIR=str(cache)) for _ in range(2)))
    assert [code for code, _ in results] == [0, 0], results
    stores = [p for p in cache.rglob("*") if p.is_dir() and (p / "store.json").is_file()]
    assert len(stores) == 1, stores
    assert not [p for p in cache.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
