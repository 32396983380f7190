"""Interop with the GPTQ ecosystem, both ways (the optional `interop` extra: gptqmodel 7.6 + optimum).

1. `compress` writes GPTQ v1 and AWQ GEMM artifacts; transformers (through optimum + gptqmodel)
   loads them, and its logits and per-layer weights match our own loader's.
2. gptqmodel quantizes a model itself; our loader reads its checkpoint and matches gptqmodel's own
   loaded model.

Facts found while writing these (gptqmodel 7.6.0, optimum 2.3.0, transformers 5.24, torch 2.13 CPU):

- Install beside the main environment, never into it: `pip install torch==2.13.0`, then
  `pip install -e '.[dev,interop]'` (gptqmodel 7.6 accepts torch 2.13 and lowers numpy to 2.2.6;
  7.7 needs torch >= 2.14.1).
- gptqmodel's CPU worker pool wants 2 workers; on a machine with fewer cores it fails ("Virtual
  pool ... requests 2 workers") unless `GPTQMODEL_CPU_WORKERS` is set, so it is set below, before
  gptqmodel is imported.
- Kernels: the tests pin gptqmodel's pure-torch kernels. Its CPU auto-choice for GPTQ is
  `TorchAtenLinear` (int4pack), which rejects out_features not a multiple of 16. Through
  transformers the backend is chosen by passing `quantization_config=GPTQConfig(bits=4,
  backend="gptq_torch")` or `AwqConfig(bits=4, backend="torch_awq")`: transformers then takes only
  the *loading attributes* (`backend`, `max_input_length`) from it and everything else (bits, groups,
  sym, layout) from the checkpoint's config.json (it warns that it did so). `"torch_awq"` is the
  name transformers' `AwqBackend` accepts; gptqmodel maps it to `BACKEND.AWQ_TORCH`. Directly:
  `GPTQModel.load(path, device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16)`.
- `TorchLinear` (GPTQ) only accepts float16/bfloat16 models (a ValueError for float32), so
  gptqmodel's side computes in float16; `GPTQModel.load` picks bfloat16 on CPU unless told.
- gptqmodel's own GPTQ save (`model.save(dir)`) writes v1: `format` and `checkpoint_format` both
  "gptq", `desc_act` false, `meta.act_group_aware` true (its group-aware reordering; the stored
  g_idx says where each input went, and our loader honours g_idx), `damp_percent` 0.05.
  `model.quantize(list_of_strings, batch_size=...)` takes raw text and tokenizes it itself;
  texts shorter than `calibration_data_min_length` (10 tokens) are dropped.
- The tiny Llama's widths (64, 128, KV width 32) are multiples of 16 and of the group size.

Tolerances. Logits: ours are computed in float32, gptqmodel's in float16; over two tiny blocks the
observed max |Δlogit| is ~5e-4 (logits up to ~0.7), while quantizing at all moves logits by ~0.1.
`LOGIT_ATOL = 5e-3` is 10x the float16 noise and 20x below the quantization effect. Weights: each
layer's dequantized weight is read out of gptqmodel's module by feeding it the identity matrix and
compared with ours in units of the layer's own quantization step (scale): a packing mistake (a
swapped nibble, a zero point off by one, a wrong group) moves a weight by at least one whole step,
while float16 rounding moves it by ~1e-3 steps; `STEP_TOL = 0.05` steps sits between.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(2, os.cpu_count() or 1))))

import pytest
import torch

pytest.importorskip("gptqmodel")
pytest.importorskip("optimum")

import compress
from compress.modeling import resolve_model
from compress.quantize.packed import load_packed
from compress.quantize.qlinear import QuantLinear

pytestmark = pytest.mark.slow

GROUP_SIZE = 64
SEQ_LEN = 64
LOGIT_ATOL = 5e-3
STEP_TOL = 0.05


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A random tiny Llama whose widths suit gptqmodel's kernels (multiples of 16 and of 64)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    path = tmp_path_factory.mktemp("interop-llama")
    model.save_pretrained(path)
    for file in tiny_tokenizer_dir.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    return path


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    """Local calibration text, in the style the tiny tokenizer was trained on."""
    lines = [f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]
    path = tmp_path_factory.mktemp("interop-calib") / "calib.txt"
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def input_ids():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 300, (2, 32), generator=generator)


@pytest.fixture(scope="module")
def dense_logits(llama_dir, input_ids):
    from transformers import AutoModelForCausalLM

    return _logits(AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32), input_ids)


def _logits(model, input_ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=input_ids.to(model.device)).logits.float().cpu()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _ours(path):
    return load_packed(resolve_model(path), "cpu", "float32")


def _assert_same_logits(ours, theirs, dense) -> None:
    diff, effect = _max_diff(ours, theirs), _max_diff(ours, dense)
    print(f"max |Δlogit| ours vs theirs {diff:.2e}; quantized vs dense {effect:.2e}")
    assert effect > 10 * LOGIT_ATOL, "quantization must move logits far more than the tolerance"
    assert diff <= LOGIT_ATOL


def _assert_same_weights(ours_model, theirs_model) -> None:
    """Every packed layer dequantizes to the same weights on both sides, within STEP_TOL steps."""
    checked, worst = 0, 0.0
    for name, ours in ours_model.named_modules():
        if not isinstance(ours, QuantLinear):
            continue
        theirs = theirs_model.get_submodule(name)
        eye = torch.eye(ours.in_features, dtype=theirs_model.dtype)
        with torch.inference_mode():
            out = theirs(eye).float()  # row i = W[:, i] + bias
        if getattr(theirs, "bias", None) is not None:
            out = out - theirs.bias.float()
        qw = ours.quantized_weight()
        step = qw.scales.float()[:, qw.g_idx.long()]
        steps = ((out.T - qw.dequantize(torch.float32)).abs() / step).max().item()
        worst = max(worst, steps)
        assert steps <= STEP_TOL, f"{name}: weights differ by {steps:.3f} quantization steps"
        checked += 1
    print(f"{checked} layers; worst weight difference {worst:.2e} steps")
    assert checked == 2 * 7


@pytest.mark.parametrize(
    ("method", "backend"), [("gptq", "gptq_torch"), ("awq", "torch_awq")], ids=["gptq", "awq"]
)
def test_transformers_loads_our_artifact(
    method, backend, llama_dir, calib_file, input_ids, dense_logits, tmp_path
):
    """compress GPTQ v1 / AWQ GEMM → transformers + optimum + gptqmodel (pure-torch kernels, fp16).

    With the default group size: the widths (64 and 128) would take groups of 64 and 128 layer by
    layer, which a config.json with one `group_size` cannot describe; the default is one size
    (64) that divides both."""
    from transformers import AutoModelForCausalLM, AwqConfig, GPTQConfig

    out = compress.quantize(
        llama_dir,
        tmp_path / method,
        method=method,
        bits=4,
        calib=str(calib_file),
        calib_samples=8,
        seq_len=SEQ_LEN,
        device="cpu",
    )
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == GROUP_SIZE
    ours_model = _ours(out)
    loading = GPTQConfig(bits=4, backend=backend) if method == "gptq" else AwqConfig(bits=4, backend=backend)
    theirs_model = AutoModelForCausalLM.from_pretrained(
        out, device_map="cpu", dtype=torch.float16, quantization_config=loading
    )
    kernel = "TorchLinear" if method == "gptq" else "AwqTorchLinear"
    assert type(theirs_model.model.layers[0].mlp.down_proj).__name__ == kernel
    _assert_same_weights(ours_model, theirs_model)
    _assert_same_logits(_logits(ours_model, input_ids), _logits(theirs_model, input_ids), dense_logits)


def test_we_load_gptqmodels_checkpoint(llama_dir, calib_file, input_ids, dense_logits, tmp_path, monkeypatch):
    """gptqmodel GPTQ (4 bits, group 64, sym, desc_act False, its own save) → `load_packed`.

    gptqmodel's quantize writes `logs/gptq_log_*.log` into the working directory: run it in tmp.
    """
    import json

    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    lines = calib_file.read_text().splitlines(keepends=True)
    calibration = ["".join(lines[i : i + 8]) for i in range(0, 8 * 16, 8)]  # 16 texts of ~60 tokens
    model = GPTQModel.load(
        str(llama_dir), QuantizeConfig(bits=4, group_size=GROUP_SIZE, sym=True, desc_act=False)
    )
    monkeypatch.chdir(tmp_path)
    model.quantize(calibration, batch_size=4)
    saved = tmp_path / "gptqmodel"
    model.save(str(saved))
    quantization = json.loads((saved / "config.json").read_text())["quantization_config"]
    assert quantization["checkpoint_format"] == "gptq" and quantization["group_size"] == GROUP_SIZE

    theirs_model = GPTQModel.load(
        str(saved), device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16
    ).model
    ours_model = _ours(saved)
    _assert_same_weights(ours_model, theirs_model)
    _assert_same_logits(_logits(ours_model, input_ids), _logits(theirs_model, input_ids), dense_logits)
