"""What a command may touch (`compress/ownership.py`), and what a recipe's cache key covers.

The robustness table (`test_robustness.py`) runs every command with the user's files around it;
these are the rules underneath, and the GGUF case of the recipe cache.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import TINYSTORIES_TEXT

from compress.errors import CompressError
from compress.modeling import fingerprint_files
from compress.ownership import check_output_dir, check_report_path, data_paths, written_by_compress


def test_an_output_may_not_be_contain_or_lie_inside_an_input(tmp_path):
    model = tmp_path / "parent" / "model"
    model.mkdir(parents=True)
    for out, relation in [(model, "is"), (tmp_path / "parent", "contains"), (model / "q", "lies inside")]:
        with pytest.raises(CompressError, match=f"{relation} the input"):
            check_output_dir(out, force=True, inputs=(model,))
    check_output_dir(tmp_path / "parent" / "model-q", force=False, inputs=(model,))  # a sibling is fine


def test_force_needs_our_manifest_not_a_file_named_like_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "compress.json").write_text(json.dumps({"tool": {"name": "someone-else"}}))
    assert not written_by_compress(out)
    with pytest.raises(CompressError, match="did not write"):
        check_output_dir(out, force=True)
    (out / "compress.json").write_text(json.dumps({"tool": {"name": "compress", "version": "0"}}))
    assert written_by_compress(out)
    check_output_dir(out, force=True)
    with pytest.raises(CompressError, match="pass --force"):
        check_output_dir(out, force=False)


def test_a_report_may_not_replace_an_input_or_a_file_inside_one(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(CompressError, match="--json .* lies inside the input"):
        check_report_path(model / "model.safetensors", (model,), "--json")
    with pytest.raises(CompressError, match="is a directory"):
        check_report_path(model, (), "--json")
    check_report_path(tmp_path / "report.json", (model,), "--json")


def test_data_paths_are_the_local_files_among_sources(tmp_path):
    text = tmp_path / "calib.jsonl"
    text.write_text('{"text": "x"}\n')
    found = data_paths(str(text), f"{text}:text", "hf:wikitext:wikitext-2-raw-v1:test", None)
    assert found == (text, text)


def test_a_gguf_artifact_is_fingerprinted_by_its_file(tmp_path):
    """A fingerprint over config and safetensors alone called every GGUF artifact the same."""
    (tmp_path / "m.gguf").write_bytes(b"GGUF one")
    first = fingerprint_files(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF two")
    assert fingerprint_files(tmp_path) != first


def test_a_changed_gguf_stage_reruns_every_stage_downstream(llama_cpp, run_cli, tiny_model_dir, tmp_path):
    """`--set stages.g8.export.type=q4_0` rebuilds g8, and the stage made from it must follow."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        version: 1
        name: stale
        model: {tiny_model_dir("llama")}
        data:
          eval: {{source: "{TINYSTORIES_TEXT}", seq_len: 64, max_tokens: 512}}
        stages:
          - {{name: g8, export: {{type: q8_0}}}}
          - {{name: from-g8, from: g8, quantize: {{method: fp16}}}}
        eval:
          suite: quick
          metrics: [size]
        """)
    )
    run = tmp_path / "run"

    def statuses(*overrides: str) -> dict[str, str]:
        code, _, err = run_cli("run", recipe, "--out", run, *overrides)
        assert code == 0, err
        return {s["name"]: s["status"] for s in json.loads((run / "results.json").read_text())["stages"]}

    assert statuses() == {"g8": "ran", "from-g8": "ran"}
    weights = (run / "from-g8" / "model.safetensors").read_bytes()
    assert statuses() == {"g8": "cached", "from-g8": "cached"}
    assert statuses("--set", "stages.g8.export.type=q4_0") == {"g8": "ran", "from-g8": "ran"}
    assert (run / "from-g8" / "model.safetensors").read_bytes() != weights  # Q4_0 weights, not Q8_0's
