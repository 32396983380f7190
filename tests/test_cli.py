"""The command line: conventions, and one-line errors with exit code 2 for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

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
