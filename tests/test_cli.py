"""The command line: conventions, and one-line errors with exit code 2 for every bad input."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from compress.version import __version__


def test_version_and_help(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"compress {__version__}"
    code, out, _ = run_cli("--help")
    assert code == 0
    for command in ("quantize", "inspect", "demo"):
        assert command in out
    code, out, _ = run_cli("quantize", "--help")
    assert code == 0 and "Examples" in out and "fp16" in out


def test_only_delivered_methods_are_registered(run_cli):
    code, _, err = run_cli("quantize", "model", "--method", "hqq")
    assert_one_line_error(code, err, "--method")


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "compress", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout


def test_quantize_and_inspect(run_cli, tiny_model_dir, tmp_path):
    out = tmp_path / "fp16"
    code, stdout, _ = run_cli("--quiet", "quantize", tiny_model_dir("opt"), "--method", "fp16", "--out", out)
    assert code == 0 and stdout.strip() == str(out)

    code, stdout, _ = run_cli("inspect", out, "--json")
    info = json.loads(stdout)
    assert code == 0
    assert info["is_artifact"] and info["manifest"]["method"] == "fp16"
    assert info["parameters"] > 0 and info["bits_per_weight"] == 16.0
    assert "quantize" in info["manifest"]["command"]

    code, stdout, _ = run_cli("inspect", out)
    assert code == 0 and "How it was made" in stdout and "source model" in stdout

    code, stdout, _ = run_cli("--json", "quantize", out, "--method", "bf16", "--out", tmp_path / "bf16")
    assert code == 0 and json.loads(stdout)["manifest"]["lineage"]["parent"]["method"] == "fp16"


def test_inspect_plain_model_directory(run_cli, tiny_model_dir):
    code, stdout, _ = run_cli("--json", "inspect", tiny_model_dir("gpt2"))
    info = json.loads(stdout)
    assert code == 0 and not info["is_artifact"] and info["model_type"] == "gpt2"


def test_bad_inputs_are_one_line_errors(run_cli, tiny_model_dir, tmp_path):
    (tmp_path / "no-config").mkdir()
    unsupported = tmp_path / "bert"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "bert"}))
    existing = tmp_path / "existing"
    existing.mkdir()
    model = tiny_model_dir("llama")

    cases = [
        (("quantize", tmp_path / "missing", "--out", tmp_path / "o"), "does not exist"),
        (("quantize", tmp_path / "no-config", "--out", tmp_path / "o"), "no config.json"),
        (("quantize", unsupported, "--out", tmp_path / "o"), "unsupported architecture 'bert'"),
        (("quantize", model, "--out", existing), "already exists; pass --force"),
        (
            ("quantize", "some-org/uncached-model", "--out", tmp_path / "o"),
            "not in the local Hugging Face cache",
        ),
        (("quantize", model, "--bits", "1", "--out", tmp_path / "o"), "no quantization method for --bits 1"),
        (("quantize", model, "--device", "tpu9", "--out", tmp_path / "o"), "unknown device"),
        (("quantize", model, "--no-such-flag"), "No such option"),
        (("inspect", tmp_path / "missing"), "is not a directory"),
    ]
    for argv, fragment in cases:
        code, _, err = run_cli(*argv)
        assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()
    assert list(existing.iterdir()) == []


def test_debug_flag_shows_the_traceback(run_cli, tmp_path):
    code, _, err = run_cli("--debug", "quantize", tmp_path / "missing")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_unexpected_failure_is_one_line_with_its_own_exit_code(
    run_cli, tiny_model_dir, tmp_path, monkeypatch
):
    import compress.quantize.runner as runner

    def crash(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(runner, "save_model_files", crash)
    code, _, err = run_cli("quantize", tiny_model_dir("llama"), "--out", tmp_path / "o")
    lines = err.strip().splitlines()
    assert code == 3 and "internal error: ZeroDivisionError: boom" in lines[-1] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_data_command_shows_windows_and_fingerprint(run_cli, tiny_model_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(50)))
    code, out, _ = run_cli(
        "--json", "data", corpus, "-t", tiny_model_dir("llama"), "--seq-len", "16", "--samples", "3"
    )
    assert code == 0
    fingerprint = json.loads(out)
    assert (fingerprint["samples"], fingerprint["tokens"], fingerprint["seed"]) == (3, 48, 0)
    assert len(fingerprint["sha256"]) == 64


def test_bad_data_sources_are_one_line_errors(run_cli, tiny_model_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("def f(): pass")
    tokenizer = tiny_model_dir("llama")
    cases = [
        ((tmp_path / "empty.txt", "--sequential"), "is empty"),
        ((tmp_path / "short.txt", "--sequential", "--seq-len", "64"), "fewer than one window"),
        ((tmp_path / "short.txt", "--seq-len", "8", "--samples", "10"), "fewer than 10 windows"),
        (("s3:bucket/key",), "unknown data source scheme 's3:'"),
        ((tmp_path / "missing.jsonl",), "does not exist"),
        (("hf:some-org/uncached-dataset",), "hub dataset"),
    ]
    for argv, fragment in cases:
        code, _, err = run_cli("data", *argv, "--tokenizer", tokenizer)
        assert_one_line_error(code, err, fragment)


# --- issue 26: every OS error and broken file a user causes is exit 2, genuine bugs stay exit 3 -----


def _copy_model(model, target):
    import shutil

    shutil.copytree(model, target)
    return target


def test_a_full_disk_reported_by_safetensors_is_exit_2_naming_the_file(
    run_cli, tiny_model_dir, tmp_path, monkeypatch
):
    """safetensors raises its own SafetensorError with the OS error only in its text."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    model = tiny_model_dir("llama")  # saved before the disk "fills"
    monkeypatch.setattr(safetensors.torch, "serialize_file", full)
    out = tmp_path / "o"
    for method in ("fp16", "rtn"):
        code, _, err = run_cli("quantize", model, "-m", method, "--out", out)
        assert_one_line_error(code, err, "No space left on device", ".safetensors'", "free some space")
        assert str(tmp_path) in err
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_write_without_an_errno_is_still_out_of_space(tmp_path):
    """torch's serializer reports a short write as "unexpected pos …", with no errno and no path."""
    import torch

    from compress.errors import user_error_message

    if not Path("/dev/full").is_char_device():
        pytest.skip("no /dev/full")
    full = tmp_path / "full.pt"
    full.symlink_to("/dev/full")  # a library that replaced the file would replace only the link
    with pytest.raises(RuntimeError) as raised:
        torch.save({"weight": torch.zeros(100_000)}, full)
    message = user_error_message(raised.value)
    assert message is not None and "disk is probably full" in message and str(full) in message


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (errno.EBUSY, "in use or a mount point"),
        (errno.EXDEV, "across file systems"),
        (errno.EMLINK, "too many entries"),
        (errno.EEXIST, "already exists there"),
        (errno.ENOTEMPTY, "not empty"),
        (errno.ENOSPC, "free some space"),
        (errno.EIO, "the disk or file system failed"),
    ],
)
def test_os_errors_while_publishing_are_exit_2_and_leave_nothing(
    run_cli, tiny_model_dir, tmp_path, monkeypatch, code, fragment
):
    """The rename that publishes an artifact fails as each of these can; the staging directory goes."""
    original = Path.rename

    def failing(self, target):
        if Path(target).name == "o":
            raise OSError(code, os.strerror(code), str(self), None, str(target))
        return original(self, target)

    model = tiny_model_dir("llama")
    monkeypatch.setattr(Path, "rename", failing)
    out = tmp_path / "o"
    exit_code, _, err = run_cli("quantize", model, "-m", "fp16", "--out", out)
    assert_one_line_error(exit_code, err, os.strerror(code), fragment)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith("o.")]


def test_a_copy_that_runs_out_of_space_names_its_target_not_its_source():
    from compress.errors import os_error_message

    error = OSError(errno.ENOSPC, "No space left on device", "/models/in/tokenizer.json", None, "/out/x")
    assert (
        os_error_message(error) == "No space left on device '/out/x': free some space or write somewhere else"
    )


def test_a_broken_json_file_anywhere_is_exit_2_naming_it(run_cli, tiny_model_dir, tmp_path):
    """The manifest of an input artifact: read by `json.loads(path.read_text())`, which names no file."""
    artifact = tmp_path / "fp16"
    assert run_cli("quantize", tiny_model_dir("llama"), "-m", "fp16", "--out", artifact)[0] == 0
    (artifact / "compress.json").write_text("{not json")
    out = tmp_path / "o"
    for argv in (
        ("quantize", artifact, "-m", "rtn", "--out", out),
        ("sparsify", artifact, "--importance", "magnitude", "--out", out),
        ("prune", artifact, "--mlp", "0.5", "--importance", "magnitude", "--out", out),
    ):
        code, _, err = run_cli(*argv)
        assert_one_line_error(
            code, err, f"'{artifact / 'compress.json'}' is not valid JSON", "line 1 column 2"
        )
        assert not out.exists()


def test_a_config_json_that_is_not_text_is_exit_2_naming_it(run_cli, tiny_model_dir, tmp_path):
    model = _copy_model(tiny_model_dir("llama"), tmp_path / "model")
    (model / "config.json").write_bytes(bytes(range(128, 256)) * 8)
    for argv in (("inspect", model), ("quantize", model, "-m", "rtn", "--out", tmp_path / "o")):
        code, _, err = run_cli(*argv)
        assert_one_line_error(code, err, f"'{model / 'config.json'}' is not UTF-8 text")
    assert not (tmp_path / "o").exists()


def test_genuine_bugs_stay_exit_3(run_cli, tiny_model_dir, tmp_path, monkeypatch):
    """A parse of text that is no file, and an error that carries no OS error, are ours."""
    import json as json_module

    import compress.quantize.runner as runner
    from compress.errors import user_error_message

    for bug in (ValueError("shape mismatch"), RuntimeError("[2, 3] vs [3, 2]"), KeyError("layer")):
        assert user_error_message(bug) is None
    with pytest.raises(json_module.JSONDecodeError) as raised:
        json_module.loads("{not json")
    assert user_error_message(raised.value) is None

    def crash(*args, **kwargs):
        json_module.loads("{not json")

    monkeypatch.setattr(runner, "save_model_files", crash)
    code, _, err = run_cli("quantize", tiny_model_dir("llama"), "-m", "fp16", "--out", tmp_path / "o")
    assert code == 3 and "internal error: JSONDecodeError" in err


def test_an_error_line_is_one_line_even_when_the_message_is_empty_or_several(
    run_cli, tiny_model_dir, monkeypatch
):
    import compress.quantize.runner as runner
    from compress.errors import CompressError

    for message, expected in (("", "error: CompressError"), ("a\nb\n\nc", "error: a b c")):

        def fail(*args, message=message, **kwargs):
            raise CompressError(message)

        monkeypatch.setattr(runner, "resolve_model", fail)
        code, _, err = run_cli("quantize", tiny_model_dir("llama"), "-m", "fp16")
        assert_one_line_error(code, err)
        assert err.strip() == expected


# --- issue 26: a tokenizer that cannot load is one line naming the directory and the problem ----------


def _broken_tokenizer(model, target, edit):
    import json as json_module

    copy = _copy_model(model, target)
    edit(copy, json_module.loads((copy / "tokenizer.json").read_text()))
    return copy


TOKENIZER_BREAKS = {
    "tokenizer.json not JSON": (
        lambda d, fast: (d / "tokenizer.json").write_text("{not json"),
        "tokenizer.json' is not valid JSON",
    ),
    "tokenizer.json describes nothing": (
        lambda d, fast: (d / "tokenizer.json").write_text(json.dumps({**fast, "model": {"type": "BPE"}})),
        "tokenizer.json' does not describe a usable tokenizer",
    ),
    "vocabulary garbage": (
        lambda d, fast: (d / "tokenizer.json").write_text(
            json.dumps({**fast, "model": {**fast["model"], "vocab": {"a": "b"}}})
        ),
        "tokenizer.json' does not describe a usable tokenizer",
    ),
    "tokenizer.json binary": (
        lambda d, fast: (d / "tokenizer.json").write_bytes(bytes(range(128, 256)) * 20),
        "tokenizer.json' is not UTF-8 text",
    ),
    "tokenizer_config.json a list": (
        lambda d, fast: (d / "tokenizer_config.json").write_text("[]"),
        "tokenizer_config.json' holds a JSON list, not an object",
    ),
    "unknown tokenizer class": (
        lambda d, fast: (
            (d / "tokenizer.json").unlink(),
            (d / "vocab.json").write_text(json.dumps(fast["model"]["vocab"])),
            (d / "merges.txt").write_text("#version: 0.2\n"),
            (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "NoSuchTokenizer"})),
        ),
        "names tokenizer_class 'NoSuchTokenizer', which transformers does not know",
    ),
    "no tokenizer files": (
        lambda d, fast: (d / "tokenizer.json").unlink(),
        "has no tokenizer files",
    ),
}


@pytest.mark.parametrize("name", sorted(TOKENIZER_BREAKS))
def test_a_bad_tokenizer_is_one_line_naming_the_directory_and_the_problem(
    run_cli, tiny_model_dir, tmp_path, name
):
    edit, fragment = TOKENIZER_BREAKS[name]
    model = _broken_tokenizer(tiny_model_dir("llama"), tmp_path / "model", edit)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(50)))
    out = tmp_path / "o"
    for argv in (
        ("data", text, "--tokenizer", model, "--seq-len", "16", "--samples", "2"),
        (
            "quantize",
            model,
            "-m",
            "gptq",
            "--calib",
            text,
            "--calib-samples",
            "2",
            "--seq-len",
            "16",
            "--out",
            out,
        ),
    ):
        code, _, err = run_cli(*argv)
        assert_one_line_error(code, err, str(model), fragment)
        assert not out.exists()


# --- issue 26: options that cannot apply are refused before any work ----------------------------------

REFUSED_OPTIONS = [
    (("quantize", "-m", "rtn", "--group-fallback"), "--group-fallback only changes an explicit --group-size"),
    (("quantize", "-m", "rtn", "--group-size", "-1", "--group-fallback"), "is -1 (whole rows)"),
    (("quantize", "-m", "fp16", "--group-size", "32"), "--group-size has no effect with --method fp16"),
    (("quantize", "-m", "rtn", "--act-order"), "--act-order has no effect with --method rtn"),
    (("quantize", "-m", "awq", "--no-act-order"), "--act-order has no effect with --method awq"),
    (
        ("quantize", "-m", "int8", "--calib", "builtin:python-stdlib"),
        "--calib has no effect with --method int8",
    ),
    (("quantize", "-m", "nf4", "--calib-samples", "8"), "--calib-samples has no effect with --method nf4"),
    (("quantize", "-m", "fp16", "--seq-len", "512"), "--seq-len has no effect with --method fp16"),
    (("quantize", "-m", "rtn", "--seed", "3"), "--seed has no effect with --method rtn"),
    (("quantize", "-m", "rtn", "--calib-dtype", "float32"), "--calib-dtype has no effect with --method rtn"),
    (("quantize", "-m", "rtn", "--damp-percent", "0.1"), "--damp-percent has no effect with --method rtn"),
    (("quantize", "-m", "gptq", "--double-quant"), "--double-quant has no effect with --method gptq"),
    (("quantize", "-m", "int8", "--double-quant"), "--double-quant has no effect with --method int8"),
    (
        ("quantize", "-m", "int8", "--compute-dtype", "float16"),
        "--compute-dtype has no effect with --method int8",
    ),
    (("quantize", "-m", "nf4", "--sym"), "--sym/--asym has no effect with --method nf4"),
    (("quantize", "-m", "bf16", "--asym"), "--sym/--asym has no effect with --method bf16"),
    (("quantize", "-m", "fp16", "--keep-dtype"), "--keep-dtype has no effect with --method fp16"),
    (("sparsify", "--pattern", "2:4", "--sparsity", "0.3"), "--sparsity 0.3 disagrees with --pattern 2:4"),
    (
        ("sparsify", "--importance", "magnitude", "--calib", "x.txt"),
        "--calib has no effect with --importance",
    ),
    (("sparsify", "--importance", "magnitude", "--seed", "1"), "--seed has no effect with --importance"),
    (("prune", "--mlp", "0.5", "--head-grouping", "groups"), "--head-grouping groups has no effect"),
    (("prune", "--mlp", "0.5", "--layer-importance", "loss"), "--layer-importance loss ranks blocks"),
]


@pytest.mark.parametrize(("argv", "fragment"), REFUSED_OPTIONS, ids=[" ".join(a) for a, _ in REFUSED_OPTIONS])
def test_an_option_that_cannot_apply_is_refused_before_any_work(run_cli, tmp_path, argv, fragment):
    """Refused while parsing the options: the model path does not even exist, so any work (which
    starts by resolving it) would have failed with another error."""
    command, *options = argv
    code, _, err = run_cli(command, tmp_path / "no-model", *options, "--out", tmp_path / "o")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


REFUSED_DISTILL_OPTIONS = [
    (("--loss", "kl", "--alpha", "0.3"), "--alpha weighs KL against CE"),
    (("--loss", "ce", "--temperature", "2"), "--temperature softens the KL term"),
    (("--student-init", "random"), "--student-init chooses how a --student-config student starts"),
    (("--no-eval", "--suite", "quick"), "--suite chooses the final evaluation"),
    (("--no-eval", "--eval-data", "x.txt"), "--eval-data chooses the final evaluation"),
    (("--greedy", "--top-p", "0.9"), "--top-p has no effect with --greedy"),
    (("--greedy", "--sampling-temperature", "0.7"), "--sampling-temperature has no effect with --greedy"),
    (("--greedy", "--samples-per-prompt", "4"), "--samples-per-prompt 4 needs --sample"),
]


@pytest.mark.parametrize(("options", "fragment"), REFUSED_DISTILL_OPTIONS)
def test_a_distillation_option_that_cannot_apply_is_refused_before_any_work(
    run_cli, tmp_path, options, fragment
):
    out = tmp_path / "o"
    code, _, err = run_cli("distill", "--teacher", tmp_path / "t", "--student", tmp_path / "s", *options,
                           "--out", out)  # fmt: skip
    assert_one_line_error(code, err, fragment)
    assert not out.exists() and not (tmp_path / "o.work").exists()


def test_options_a_method_uses_are_still_accepted_and_recorded(run_cli, tiny_model_dir, tmp_path):
    from compress.artifact import read_manifest

    model = tiny_model_dir("llama")
    out = tmp_path / "rtn"
    code, _, err = run_cli("quantize", model, "-m", "rtn", "--group-size", "16", "--group-fallback", "--asym",
                           "--keep-dtype", "--out", out)  # fmt: skip
    assert code == 0, err
    parameters = read_manifest(out).parameters
    assert parameters["group_fallback"] is True and parameters["sym"] is False
    assert parameters["act_order"] is None and parameters["calib_dtype"] == "auto"  # rtn has neither
    sparse = tmp_path / "sparse"
    code, _, err = run_cli("sparsify", model, "--pattern", "2:4", "--sparsity", "0.5",
                           "--importance", "magnitude", "--out", sparse)  # fmt: skip
    assert code == 0, err
    assert read_manifest(sparse).parameters["sparsity"] == 0.5
