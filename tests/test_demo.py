"""The trained demo model, and the fp16 artifact made from it: loadable, faithful, complete."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compress
from compress.artifact import Manifest, read_manifest
from compress.data import sequential_windows
from compress.demo import FAST_RECIPE, HELDOUT_SOURCE

pytestmark = pytest.mark.slow


@pytest.mark.quality
def test_demo_model_learned(demo, record_property):
    record_property("heldout_ppl", demo[1]["heldout_ppl"])
    path, record = demo
    # A model that learned nothing scores about its vocabulary size; this one must be far below.
    assert record["vocab_size"] == FAST_RECIPE.vocab_size
    assert record["heldout_ppl"] < record["vocab_size"] / 8
    assert record["final_loss"] < record["first_loss"] - 2
    assert record["train_data"]["tokens"] == FAST_RECIPE.steps * FAST_RECIPE.batch_size * FAST_RECIPE.seq_len
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert list(path.glob("*.safetensors"))


def test_fp16_artifact_matches_the_source(demo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = demo
    out = compress.quantize(path, tmp_path / "fp16", method="fp16", device="cpu")

    manifest = read_manifest(out)
    assert set(manifest.model_dump()) == set(Manifest.model_fields)
    assert all(
        value not in (None, "", {}, [])
        for key, value in manifest.model_dump().items()
        if key not in ("recipe", "calibration", "seed", "extra")
    )

    source = AutoModelForCausalLM.from_pretrained(path).eval()
    artifact = AutoModelForCausalLM.from_pretrained(out).eval()
    assert next(artifact.parameters()).dtype == torch.float16
    tokenizer = AutoTokenizer.from_pretrained(out)
    windows = sequential_windows(tokenizer, HELDOUT_SOURCE, seq_len=128, max_tokens=512).input_ids
    with torch.inference_mode():
        expected = source(input_ids=windows).logits
        actual = artifact.float()(input_ids=windows).logits
    # fp16 keeps ~3 significant digits per weight; through a few layers logits stay within ~1e-2.
    assert (actual - expected).abs().max() < 0.05
    assert (actual.argmax(-1) == expected.argmax(-1)).float().mean() > 0.99


def test_demo_command_end_to_end(run_cli, demo, tmp_path):
    code, out, err = run_cli("demo", "--fast", "--out", tmp_path / "demo")
    assert code == 0, err
    assert "held-out perplexity" in out and "compress run demo" in out
    # compress's own progress only: no third-party bars (lm-eval's, tqdm's), warnings or load reports
    for noise in ("it/s", "%|", "Warning", "Loading weights"):
        assert noise not in err, err
    assert (tmp_path / "demo" / "fp16" / "compress.json").is_file()
    code, out, _ = run_cli("--json", "demo", "--fast", "--out", tmp_path / "demo")
    payload = json.loads(out)
    assert payload["record"]["heldout_ppl"] == demo[1]["heldout_ppl"]
    assert payload["recipe"] == "demo" and payload["passed"]
    assert {stage["status"] for stage in payload["stages"]} == {"cached"}
    assert payload["comparison"][0]["name"] == "base"
    assert read_manifest(tmp_path / "demo" / "fp16").recipe["stage"] == "fp16"


def test_demo_build_is_bit_identical_in_another_process_at_another_thread_count(demo, tmp_path):
    """A second build of the fast demo model, in a fresh process with one thread (the cached one
    was built with the default), has the same weights and tokenizer, byte for byte."""
    script = (
        "import torch; torch.set_num_threads(1); from compress.demo import demo_model; demo_model(fast=True)"
    )
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    rebuilt = next((tmp_path / "demo").glob("fast-*"))
    assert rebuilt.name == Path(demo[0]).name
    for name in ("model.safetensors", "tokenizer.json"):
        assert _sha256(rebuilt / name) == _sha256(Path(demo[0]) / name), name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
