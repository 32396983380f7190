"""`--max-memory`: blocks streamed from disk give the very artifact the in-memory path gives."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error
from safetensors.torch import load_file

import compress
from compress.modeling import resolve_model
from compress.quantize.packed import load_packed

CALIBRATION = "builtin:python-stdlib:train"


def _tensors(artifact) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(artifact.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def _assert_same_tensors(a, b) -> None:
    first, second = _tensors(a), _tensors(b)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_streamed_calibration_matches_in_memory(demo, tmp_path, method):
    options = dict(method=method, bits=4, calib=CALIBRATION, calib_samples=8, seq_len=64, device="cpu")
    in_memory = compress.quantize(demo[0], tmp_path / "memory", **options)
    streamed = compress.quantize(demo[0], tmp_path / "streamed", max_memory="3MB", **options)
    _assert_same_tensors(in_memory, streamed)
    # A small budget means small shards: several files and the index transformers reads.
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(list(streamed.glob("*.safetensors"))) > 1
    assert json.loads((streamed / "compress.json").read_text())["parameters"]["max_memory"] == "3MB"
    ids = torch.arange(32).unsqueeze(0)
    with torch.inference_mode():
        logits = [
            load_packed(resolve_model(p), "cpu", "float32")(input_ids=ids).logits
            for p in (in_memory, streamed)
        ]
    assert torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_streamed_rtn_matches_in_memory(tiny_model_dir, tmp_path, architecture):
    source = tiny_model_dir(architecture)
    options = dict(method="rtn", bits=4, group_size=16, device="cpu")
    in_memory = compress.quantize(source, tmp_path / "memory", **options)
    streamed = compress.quantize(source, tmp_path / "streamed", max_memory="1MB", **options)
    _assert_same_tensors(in_memory, streamed)


def test_max_memory_errors(run_cli, tiny_model_dir, tmp_path):
    source = tiny_model_dir("llama")
    code, _, err = run_cli(
        "quantize", source, "--method", "int8", "--max-memory", "1GB", "-o", tmp_path / "a"
    )
    assert_one_line_error(code, err, "--max-memory", "int8")
    code, _, err = run_cli(
        "quantize", source, "--method", "rtn", "--max-memory", "lots", "-o", tmp_path / "b"
    )
    assert_one_line_error(code, err, "not a size")
    code, _, err = run_cli(
        "quantize", source, "--method", "rtn", "--max-memory", "1000", "-o", tmp_path / "c"
    )
    assert_one_line_error(code, err, "below one block")
    # Offline with no --calib, data-free calibration would need the whole model in memory.
    code, _, err = run_cli("quantize", source, "--bits", "4", "--max-memory", "1GB", "-o", tmp_path / "d")
    assert_one_line_error(code, err, "--calib")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smollm2_streams_within_a_quarter_of_its_size(smollm2, tmp_path):
    """A real 30-layer model: GPTQ with a budget of a quarter of its float32 weights (134 MB of
    538 MB) gives the in-memory artifact's tensors exactly."""
    source = smollm2
    options = dict(method="gptq", bits=4, calib=CALIBRATION, calib_samples=4, seq_len=64, device="cpu")
    in_memory = compress.quantize(source, tmp_path / "memory", **options)
    streamed = compress.quantize(source, tmp_path / "streamed", max_memory="134MB", **options)
    _assert_same_tensors(in_memory, streamed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_tensor_written_in_chunks_is_a_standard_safetensors_shard(tmp_path, dtype):
    """`add_in_chunks` lays the file out by hand; safetensors must read it back exactly, and the
    reader's row chunks and row gather must give the same rows."""
    from compress.checkpoint import CheckpointReader, ShardWriter

    table = torch.randn(1001, 7).to(dtype)
    writer = ShardWriter(tmp_path, max_shard_bytes=1000)
    writer.add("small", torch.arange(3))
    writer.add_in_chunks("table", list(table.shape), dtype, table.split(100))
    writer.finish()
    assert torch.equal(_tensors(tmp_path)["table"], table)
    reader = CheckpointReader(tmp_path)
    chunks = list(reader.row_chunks("table", chunk_bytes=50 * 7 * table.element_size()))
    assert [start for start, _ in chunks] == list(range(0, 1001, 50))
    assert torch.equal(torch.cat([rows for _, rows in chunks]), table)
    indices = torch.tensor([0, 49, 50, 333, 1000])
    assert torch.equal(reader.rows("table", indices), table[indices])


def test_stage_probe_runs_once_per_kind_of_block(tiny_model_dir, monkeypatch):
    """Decoders repeat one block: the probe forward that finds the stages runs once, and every block
    gets the same stages over its own layers."""
    import compress.calibrate as calibrate
    from compress.modeling import discover_layout, load_model

    model = load_model(resolve_model(tiny_model_dir("llama")), "float32", "cpu")
    layout = discover_layout(model)
    probes, seen = [], []
    real_probe = calibrate.sequential_stages

    def counting_probe(block, inputs):
        probes.append(block)
        return real_probe(block, inputs)

    def transform(index, block, inputs, stages):
        seen.append([[layer.module for layer in stage] for stage in stages])
        assert all(layer.module in list(block.modules()) for stage in stages for layer in stage)

    monkeypatch.setattr(calibrate, "sequential_stages", counting_probe)
    calibrate.calibrate_sequentially(model, layout, torch.randint(0, 100, (2, 16)), transform)
    assert len(probes) == 1 and len(seen) == len(layout.blocks) > 1
    assert [len(stage) for stage in seen[0]] == [3, 1, 2, 1]  # q/k/v, o, gate/up, down


def test_calibration_batches_share_one_copy_of_equal_block_arguments(tiny_model_dir):
    """The rotary tables every batch receives are kept once (at the default calibration on SmolLM2
    they were 134 MB as per-batch copies), while each batch keeps its own hidden states."""
    from compress.calibrate import capture_block_inputs
    from compress.modeling import discover_layout, load_model

    model = load_model(resolve_model(tiny_model_dir("llama")), "float32", "cpu")
    captured = capture_block_inputs(model, discover_layout(model), torch.randint(0, 100, (5, 16)), 2)
    inputs = captured.first
    first, last = (
        inputs.arguments[0][1]["position_embeddings"],
        inputs.arguments[-1][1]["position_embeddings"],
    )
    assert len(inputs.hidden) == 3 and all(a is b for a, b in zip(first, last, strict=True))
    assert inputs.hidden[0].data_ptr() != inputs.hidden[1].data_ptr()
    later = captured.per_block[-1][-1][1]["position_embeddings"]  # blocks of one kind share them too
    assert all(a is b for a, b in zip(first, later, strict=True))


def test_finished_layers_wait_for_their_block_as_packed_bits(tiny_model_dir, tmp_path, monkeypatch):
    """Each layer's integers are packed as soon as they are final: while its block's later stages
    and output pass run, it holds bits/32 of its int32 codes (SmolLM2 at 4 bits: 1.8 MB a block
    instead of 14 MB). The artifact is checked elsewhere to equal the one written before."""
    from compress.quantize.packed import PackedWriter

    held = []
    write_block = PackedWriter.write_block

    def spying_write_block(self, index, block, results):
        held.append([(result.weight, result.packed) for result in results])
        write_block(self, index, block, results)

    monkeypatch.setattr(PackedWriter, "write_block", spying_write_block)
    options = dict(method="gptq", bits=4, group_size=16, calib_samples=4, seq_len=32, device="cpu")
    compress.quantize(tiny_model_dir("llama"), tmp_path / "out", calib=CALIBRATION, **options)
    assert len(held) > 1 and all(len(block) == 7 for block in held)
    assert all(
        weight is None and packed["qweight"].dtype == torch.int32
        for block in held
        for weight, packed in block
    )


def test_streaming_limits_the_heap_before_reading_the_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    """The allocator is told to map large tensors before the finiteness check reads anything: glibc
    serves later tensors from whatever free heap that check leaves, and on SmolLM2 it left 300 MB
    in one run out of two, whose pages then stayed resident between trims (50 MB at the peak)."""
    import compress.memory as memory
    import compress.quantize.runner as runner

    checked = []
    check_finite_files = runner.check_finite_files

    def recording_check(path):
        checked.append(memory._memory_first)
        check_finite_files(path)

    monkeypatch.setattr(memory, "_memory_first", False)
    monkeypatch.setattr(runner, "check_finite_files", recording_check)
    compress.quantize(tiny_model_dir("llama"), tmp_path / "out", method="rtn", max_memory="1MB", device="cpu")
    assert checked == [True]
