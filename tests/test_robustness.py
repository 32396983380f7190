"""Bad input across every subcommand, kills at chosen moments, and concurrent writers.

Bad input: exit 2, one line on stderr, nothing left behind.

Each row of `CASES` is a command line (with placeholders for the fixtures below) and a fragment
its one error line must contain. After every case the output path must not exist, and no staging
(`.tmp-*`), retired (`.old-*`) or work (`.work`) directory may remain beside it. Other modules test
the same contract for their own options; this matrix is the hostile-user sweep in one place.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, assert_one_line_error
from safetensors.torch import load_file, save_file

import compress
from compress.artifact import read_manifest

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
    paths.update({f"recipe_{p.stem.replace('-', '_')}": p for p in recipes.iterdir()})
    suite = root / "bad-suite.yaml"
    suite.write_text("metrics: [ppl, telepathy]\n")
    paths["bad_suite"] = suite
    not_json = root / "report.json"
    not_json.write_text("{ nope")
    paths["not_json"] = not_json
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
    ("quantize {model} -m rtn --out {model}", "is the input model itself"),
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


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[argv for argv, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(broken, tmp_path, run_cli, argv, fragment):
    out = tmp_path / "out"
    values = {
        **{name: str(path) for name, path in broken.items()},
        "out": str(out),
        "nowhere": str(tmp_path / "nowhere"),
        "long_name": str(tmp_path / ("x" * 300)),
        "stories": str(Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"),
    }
    code, _, err = run_cli(*[part.format(**values) for part in argv.split()])
    assert_one_line_error(code, err, fragment)
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("out.") or p.name.endswith(".work")]
    assert not leftovers, leftovers


def test_the_matrix_is_large():
    assert len(CASES) >= 60


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
