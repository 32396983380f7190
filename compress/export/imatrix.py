"""An importance matrix from our calibration data, for llama.cpp's quantizer.

llama.cpp rounds each weight row to minimize the error weighted by how large each input channel
runs: its `imatrix` tool records, per linear layer, the mean of x² over calibration tokens for
every input column, and `llama_model_quantize` takes that table (k-quants and the legacy types
alike). The same figure falls out of one forward pass with hooks on the block linears, so
`export gguf --calib TEXT` gives llama.cpp users a calibrated quantization from the data every
other technique here reads, without llama.cpp's imatrix binary or its file format.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from compress.modeling import find_decoder_blocks, find_linear_layers


@contextmanager
def _recording(model: nn.Module) -> Iterator[dict[str, list]]:
    """Hooks that add each block linear's Σx² per input column and token count: {name: [sum, n]}."""
    path, blocks = find_decoder_blocks(model)
    sums: dict[str, list] = {}
    handles = []
    for index, block in enumerate(blocks):
        for layer in find_linear_layers(block):
            name = f"{path}.{index}.{layer.name}.weight"
            sums[name] = [torch.zeros(layer.in_features, dtype=torch.float64), 0]

            def record(_module, inputs, _output, entry=sums[name]) -> None:
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
                entry[0] += (x * x).sum(dim=0)
                entry[1] += x.shape[0]

            handles.append(layer.module.register_forward_hook(record))
    try:
        yield sums
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def importance_matrix(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 4
) -> dict[str, torch.Tensor]:
    """Mean x² per input column of every block linear over `windows` [n, seq_len], by weight name."""
    with _recording(model) as sums:
        for batch in windows.split(batch_size):
            model(input_ids=batch)
    return {name: (total / max(count, 1)).to(torch.float32) for name, (total, count) in sums.items()}


class ImatrixTable:
    """The table `llama_model_quantize_params.imatrix` points to: {name, data, size} entries ended by
    a null name, with the strings and floats kept alive as long as this object."""

    def __init__(self, entry_type: type[ctypes.Structure], values: dict[str, torch.Tensor]) -> None:
        self._names = [name.encode() for name in values]
        self._arrays = [(ctypes.c_float * len(v))(*v.tolist()) for v in values.values()]
        self.entries = (entry_type * (len(values) + 1))()
        for entry, name, array in zip(self.entries, self._names, self._arrays, strict=False):
            entry.name = name
            entry.data = ctypes.cast(array, ctypes.POINTER(ctypes.c_float))
            entry.size = len(array)
