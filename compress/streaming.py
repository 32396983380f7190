"""A model whose weights stay on disk until a block needs them (`--max-memory`).

The model is built on the meta device (shapes, no storage). The calibration engine runs the model
up to block 0 to capture that block's inputs, so what runs before block 0 is read first: the input
embedding only in the rows the calibration windows use (a table of 49k-256k rows is a fifth of a
small model), the rest as stored; `lm_head` never. They are freed as soon as block 0 is loaded.
Each block is then read from the safetensors checkpoint (memory-mapped, one tensor at a time) just
before the engine visits it, and freed right after its outputs are computed. Peak memory is one
block in float32 plus the calibration activations and GPTQ's Hessian work, whatever the model's size.
"""

from __future__ import annotations

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from torch import nn

from compress.checkpoint import CheckpointReader
from compress.errors import CompressError
from compress.memory import return_freed_memory
from compress.modeling import DecoderLayout, ModelSource, discover_layout, load_config


class StreamedModel:
    """`model` lives on the meta device; `load_block`/`release_block` move one block in and out."""

    def __init__(self, source: ModelSource, device: torch.device, trust_remote_code: bool = False) -> None:
        from transformers import AutoModelForCausalLM

        config = load_config(source, trust_remote_code)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        model.tie_weights()  # on the meta device transformers leaves tied heads untied
        self.model: nn.Module = model.eval()
        self.layout: DecoderLayout = discover_layout(self.model)
        self.device = device
        self.reader = CheckpointReader(source.path, self.model)
        missing = [name for name, _ in self.model.named_parameters() if name not in self.reader]
        if missing:
            raise CompressError(
                f"cannot stream '{source.reference}': its checkpoint has no tensor named '{missing[0]}' "
                "(re-save it with transformers, or quantize without --max-memory)"
            )
        self._outside = [name for name, _ in self.model.named_parameters() if not self._in_blocks(name)]

    def calibration_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Load what runs before block 0 and return the ids to run it on.

        The input embedding gets only the rows of the ids in `input_ids` (read a chunk at a time),
        and the ids are renumbered into that table: the same hidden states for a fraction of the
        memory. The output embedding is not loaded (with tied weights it is the same tensor).

        Streaming starts here, so the heap freed by what came before (the tokenizer and the text it
        read: 40 MB for SmolLM2's, kept by glibc) goes back to the OS first."""
        return_freed_memory()
        used, renumbered = torch.unique(input_ids, return_inverse=True)
        embedding = self.model.get_input_embeddings()
        embedding_name = _parameter_name(self.model, embedding)
        output = self.model.get_output_embeddings()
        skip = {embedding_name, _parameter_name(self.model, output) if output is not None else ""}
        for name in self._outside:
            if name not in skip:
                self._load(self.model, name, name)
        rows = self.reader.rows(embedding_name, used).to(self.device, torch.float32)
        embedding.weight = nn.Parameter(rows, requires_grad=False)  # fewer rows than the config says
        return renumbered

    def _in_blocks(self, name: str) -> bool:
        return name.startswith(f"{self.layout.blocks_path}.")

    def block_prefix(self, index: int) -> str:
        return f"{self.layout.blocks_path}.{index}."

    def _load(self, module: nn.Module, local_name: str, stored_name: str) -> None:
        value = self.reader.get(stored_name)
        set_module_tensor_to_device(module, local_name, self.device, value=value, dtype=torch.float32)

    def block_bytes(self, index: int = 0) -> int:
        """Resident size of one block in float32."""
        return sum(p.numel() * 4 for p in self.layout.blocks[index].parameters())

    def load_block(self, index: int, block: nn.Module) -> None:
        """Read block `index` from disk; the weights outside the blocks are no longer needed then."""
        for name in self._outside:
            set_module_tensor_to_device(self.model, name, "meta")
        self._outside = []
        for name, _ in list(block.named_parameters()):
            self._load(block, name, self.block_prefix(index) + name)

    def release_block(self, index: int, block: nn.Module) -> None:
        for name, _ in list(block.named_parameters()):
            set_module_tensor_to_device(block, name, "meta")
        return_freed_memory()


def _parameter_name(model: nn.Module, module: nn.Module) -> str:
    """The state-dict name of `module`'s weight inside `model`."""
    return next(f"{name}.weight" for name, candidate in model.named_modules() if candidate is module)
