"""The fast kernels behind packed layers: which layer runs on which, and that each computes what
the exact dequantize path computes, within the activation dtype's rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_packing import random_qw, with_fp16_scales

from compress.quantize.kernels import DENSE_ROWS, LayerSpec, plan_kernel
from compress.quantize.qlinear import QuantLinear
from compress.quantize.qweight import QuantizedWeight
from compress.quantize.runtime import prepare_runtime, runtime_summary

CUDA = torch.cuda.is_available()
#: torch's CPU int4 layout is its own detail and differs by build path: the AVX-512 one is what
#: `_unpack_cpu_int4` decodes (so prefill takes the dense path); elsewhere (AVX2-only CPUs) the
#: kernel refuses the dense path and serves every batch itself, exactly.
AVX512_CPU = Path("/proc/cpuinfo").is_file() and "avx512f" in Path("/proc/cpuinfo").read_text()


def _magnitude(qw: QuantizedWeight, offset: int) -> torch.Tensor:
    """[out, in] bound on what each weight's kernel operands can round: |q − o|·s + |o − z|·s."""
    index = qw.g_idx.long()
    scales = qw.scales.float()[:, index]
    zeros = qw.zeros.float()[:, index]
    return ((qw.q.float() - offset).abs() + (offset - zeros).abs()) * scales


def _assert_within_rounding(layer, qw, bias, x, dtype, unit) -> None:
    """|kernel − exact| ≤ 4·unit·(|x|·M + |b|) elementwise: x, scale, zero′ (or, on the dense
    prefill path, each dequantized weight) and the output each round once with relative error
    ≤ unit (2⁻⁹ in bfloat16), and the accumulation is float32."""
    exact = F.linear(x, with_fp16_scales(qw).dequantize(), bias)
    offset = 128 if layer.plan.kernel == "int8pack" else 8
    bound = x.abs() @ _magnitude(with_fp16_scales(qw), offset).T
    if bias is not None:
        bound = bound + bias.abs()
    fast = layer(x.to(dtype)).float()
    worst = ((fast - exact).abs() / (4 * unit * bound + 1e-30)).max().item()
    assert worst <= 1.0, f"{layer.plan.kernel}: error is {worst:.2f}× the rounding bound"


FAST_CASES = [
    # (bits, in, out, group, sym, fmt, expected kernel, note)
    (4, 256, 64, 32, True, "gptq", "int4pack", ""),
    (4, 256, 64, 64, False, "gptq", "int4pack", ""),
    (4, 256, 96, 128, False, "awq", "int4pack", ""),
    (4, 64, 172, 64, False, "gptq", "int4pack", ""),  # 172 outputs: padded to 176 and sliced
    (4, 172, 64, 86, False, "gptq", "int4pack", "groups of 86 padded to 128"),  # stories260K's down_proj
    (4, 512, 48, -1, True, "gptq", "int4pack", ""),  # per-channel: one 512 group as two of 256
    (3, 192, 64, 64, True, "gptq", "int4pack", ""),  # a 3-bit grid embeds in the int4 one
    (2, 128, 32, 32, False, "gptq", "int4pack", ""),
    (8, 192, 344, -1, True, "gptq", "int8pack", ""),
    (8, 172, 40, -1, False, "gptq", "int8pack", ""),  # zero points ≠ 128 and an input width padded to 176
]


@pytest.mark.parametrize("rows", [15, 2 * DENSE_ROWS])  # decode-sized, and prefill on the dense path
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("bits", "k", "n", "group", "sym", "fmt", "kernel", "note"), FAST_CASES)
def test_fast_kernel_matches_the_exact_path(bits, k, n, group, sym, fmt, kernel, note, with_bias, rows):
    qw = random_qw(bits, k, n, group, sym=sym, seed=k + n)
    bias = torch.randn(n) if with_bias else None
    layer = QuantLinear.from_quantized(qw, bias, fmt)
    plan = layer.prepare(torch.bfloat16)
    assert plan.kernel.startswith(kernel) and plan.note == note
    assert layer.qweight is None and layer.scales is None  # the checkpoint's tensors are released
    x = torch.randn(rows // 5, 5, k)
    _assert_within_rounding(layer, qw, bias, x, torch.bfloat16, 2.0**-9)
    if kernel == "int4pack":  # torch's CPU layout decoded as expected, or the dense path left off
        assert layer.kernel.dense_rows == (DENSE_ROWS if AVX512_CPU else None)


@pytest.mark.parametrize(("bits", "k", "n", "group", "sym", "fmt", "kernel", "note"), FAST_CASES)
def test_fast_kernel_in_float32_computes_the_exact_weights(bits, k, n, group, sym, fmt, kernel, note):
    """The CPU kernels also take float32 activations: there they reproduce the exact path to 1e-5,
    which checks the repacking itself (nibble order, zero′, padding) independently of rounding."""
    qw = random_qw(bits, k, n, group, sym=sym, seed=k + n)
    layer = QuantLinear.from_quantized(qw, None, fmt)
    layer.prepare(torch.float32)
    x = torch.randn(4, k)
    exact = F.linear(x, with_fp16_scales(qw).dequantize())
    torch.testing.assert_close(layer(x), exact, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("qw", "note"),
    [
        (random_qw(4, 128, 32, 32, sym=False, act_order=True), "act-order g_idx"),
        (random_qw(8, 256, 32, 128, sym=True), "8-bit groups of 128"),
        (random_qw(4, 64, 32, 8, sym=False), "group size 8"),  # padding to 32 would quadruple it
    ],
)
def test_layers_no_kernel_takes_run_on_the_exact_path(qw, note):
    layer = QuantLinear.from_quantized(qw, None, "gptq")
    plan = layer.prepare(torch.bfloat16)
    assert (plan.kernel, plan.note) == ("dequantize", note)
    assert layer.qweight is not None  # the exact path keeps the packed tensors
    x = torch.randn(2, qw.in_features)
    expected = F.linear(x.bfloat16(), with_fp16_scales(qw).dequantize(torch.bfloat16))
    torch.testing.assert_close(layer(x.bfloat16()), expected)


def test_kernel_plans_by_device_and_dtype():
    spec = LayerSpec(in_features=576, out_features=1536, bits=4, group_size=64, contiguous_groups=True)
    assert plan_kernel(spec, "cpu", torch.bfloat16).kernel == "int4pack-cpu"
    assert plan_kernel(spec, "cuda", torch.bfloat16).kernel == "int4pack-cuda"
    assert plan_kernel(spec, "cuda", torch.float16).note == "int4 on CUDA needs bfloat16 activations"
    per_channel = LayerSpec(576, 1536, 8, 576, True)
    assert plan_kernel(per_channel, "cpu", torch.bfloat16).kernel == "int8pack"
    assert plan_kernel(per_channel, "cuda", torch.bfloat16).kernel == "dequantize"


def test_a_model_wide_cast_keeps_the_kernel_operands():
    layer = QuantLinear.from_quantized(random_qw(4, 128, 32, 64, sym=False), None, "gptq")
    layer.prepare(torch.bfloat16)
    before = layer.kernel.scales_and_zeros.clone()
    layer.to(torch.float32)
    assert torch.equal(layer.kernel.scales_and_zeros, before)
    assert layer(torch.randn(2, 128)).dtype == torch.float32  # output follows the input's dtype
    with pytest.raises(RuntimeError, match="released"):
        layer.quantized_weight()


def test_runtime_summary_counts_layers_per_kernel():
    model = torch.nn.Sequential(
        QuantLinear.from_quantized(random_qw(4, 128, 32, 64, sym=True), None, "gptq"),
        QuantLinear.from_quantized(random_qw(4, 64, 32, 8, sym=True), None, "gptq"),
    )
    assert prepare_runtime(model, torch.bfloat16) == {"int4pack-cpu": 1, "dequantize": 1}
    summary = runtime_summary(model)
    assert summary["kernels"] == {"dequantize": 1, "int4pack-cpu": 1}
    assert summary["kernel_notes"] == {"group size 8": 1}


@pytest.mark.skipif(not CUDA, reason="no CUDA device here (the device tool runs this on a GPU)")
@pytest.mark.parametrize(("bits", "k", "n", "group", "sym", "fmt", "kernel", "note"), FAST_CASES[:8])
def test_cuda_int4_kernel_matches_the_exact_path(bits, k, n, group, sym, fmt, kernel, note):
    qw = random_qw(bits, k, n, group, sym=sym, seed=k + n)
    layer = QuantLinear.from_quantized(qw, None, fmt).to("cuda")
    assert layer.prepare(torch.bfloat16).kernel == "int4pack-cuda"
    x = torch.randn(3, k, device="cuda")
    exact = F.linear(x.cpu(), with_fp16_scales(qw).dequantize())
    fast = layer(x.bfloat16()).float().cpu()
    bound = x.cpu().abs() @ _magnitude(with_fp16_scales(qw), 8).T
    assert ((fast - exact).abs() <= 4 * 2.0**-9 * bound + 1e-6).all()
