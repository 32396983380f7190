"""The sequential calibration engine, shared by GPTQ, AWQ and (later) pruning importance.

Capture the inputs of decoder block 0 on the calibration windows (hidden states and the keyword
arguments the model passes its blocks: masks, rotary embeddings, positions), then for each block:
collect statistics through forward hooks on its linear layers, let the technique transform the
block, and run the *transformed* block to produce the next block's inputs. Inside a block, layers
are visited in "true sequential" order: the layers that read the same input form a stage, and each
stage's statistics come from a forward pass through the already-transformed earlier stages.

Two things keep that affordable on a CPU. A forward that collects a stage's inputs stops as soon
as every layer of the stage has seen its input (the q/k/v stage costs a norm, not a block), and
block forwards may run their matmuls in bfloat16 (autocast; weights and the hidden states between
blocks stay float32), which is how GPU tools calibrate and ×3–4 faster on CPUs with native bf16.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress import console
from compress.errors import UnsupportedArchitectureError
from compress.memory import release_forward_heap
from compress.modeling import DecoderLayout, LinearLayer, find_linear_layers

#: Tokens per calibration forward. A forward's transient activations (the MLP's wide intermediates,
#: attention's per-head tensors) grow with the tokens it carries, not with the model: 512 tokens keep
#: them a fraction of a block whether windows are 64 tokens (8 per forward) or 2,048 (1 per forward).
FORWARD_TOKENS = 512


def forward_batch(seq_len: int) -> int:
    """Calibration windows per forward for windows of `seq_len` tokens."""
    return max(1, FORWARD_TOKENS // seq_len)


class _StopForward(Exception):
    """Raised by the block-0 hook once its inputs are captured: the rest of the model is not needed."""


#: What a block is called with besides its hidden states, per batch: extra positional arguments
#: (Gemma 4's per-layer input) and keyword arguments (masks, rotary tables, positions).
BlockArguments = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass
class BlockInputs:
    """Inputs of the current block, one entry per calibration batch, and the dtype its matmuls
    run in (float32: exact; bfloat16/float16: autocast)."""

    hidden: list[torch.Tensor]
    arguments: list[BlockArguments]
    dtype: torch.dtype = torch.float32

    def autocast(self) -> torch.autocast:
        device_type = self.hidden[0].device.type if self.hidden else "cpu"
        return torch.autocast(device_type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def calls(self) -> Iterator[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]]:
        for hidden, (args, kwargs) in zip(self.hidden, self.arguments, strict=True):
            yield hidden, args, kwargs


@dataclass
class CapturedInputs:
    """Block 0's inputs, and what every block is called with: models with sliding-window and
    global layers (Gemma 2/3, Cohere 2, Mistral's layer types) give each kind its own mask and
    rotary tables, so block 5 must not be calibrated with block 0's."""

    first: BlockInputs
    per_block: list[list[BlockArguments]]


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _reuse_if_equal(value: Any, previous: Any) -> Any:
    """`previous` where it holds the same tensors as `value` (also inside tuples and dicts), else
    `value`.

    Every batch gets the same rotary tables (cos and sin per position) and masks: kept once, not
    per batch. On SmolLM2 at the default 128 × 2048 calibration the rotary tables were 134 MB
    beside 604 MB of inputs. Blocks of one kind already share them: the model passes each the
    same tensors."""
    if isinstance(value, torch.Tensor):
        same = (
            isinstance(previous, torch.Tensor)
            and value.shape == previous.shape
            and value.dtype == previous.dtype
            and value.device == previous.device
            and torch.equal(value, previous)
        )
        return previous if same else value
    if isinstance(value, tuple) and isinstance(previous, tuple) and len(value) == len(previous):
        return tuple(_reuse_if_equal(v, p) for v, p in zip(value, previous, strict=True))
    if isinstance(value, dict) and isinstance(previous, dict):
        return {key: _reuse_if_equal(item, previous.get(key)) for key, item in value.items()}
    return value


def _hidden_of(args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    """Split a block call into its hidden states and the rest."""
    if args:
        return args[0], tuple(args[1:]), dict(kwargs)
    rest = dict(kwargs)
    return rest.pop("hidden_states"), (), rest


@torch.inference_mode()
def capture_block_inputs(
    model: nn.Module, layout: DecoderLayout, input_ids: torch.Tensor, batch_size: int
) -> CapturedInputs:
    """Run the model's own loop over its blocks on every batch, keeping block 0's hidden states
    and every block's other arguments, without computing any block.

    Every block's forward is replaced for the duration by one that records its call and hands its
    input on unchanged, and the last block stops the forward: the model computes only what it
    prepares for its blocks (embeddings, masks, rotary tables, per-layer inputs). Whether the
    model's loop expects a block to return a tensor or a tuple is learnt on the first batch (a
    loop that indexes `[0]` into a tensor hands the next block a tensor of the wrong shape).
    """
    blocks = list(layout.blocks)
    hidden_states: list[torch.Tensor] = []
    per_block: list[list[BlockArguments]] = [[] for _ in blocks]
    state = {"tuple": False, "shape": None, "retry": False}

    def stub(index: int):
        def forward(*args, **kwargs):
            hidden, rest_args, rest_kwargs = _hidden_of(args, kwargs)
            if index == 0:
                state["shape"] = hidden.shape
                hidden_states.append(hidden)
            elif not isinstance(hidden, torch.Tensor) or hidden.shape != state["shape"]:
                state["retry"] = True  # the loop unpacks what a block returns: hand it a tuple
                raise _StopForward
            seen = per_block[index]
            seen.append(_reuse_if_equal((rest_args, rest_kwargs), seen[-1] if seen else None))
            if index == len(blocks) - 1:
                raise _StopForward
            return (hidden,) if state["tuple"] else hidden

        return forward

    own_forwards = [block.__dict__.get("forward") for block in blocks]  # an accelerate hook's, say
    for index, block in enumerate(blocks):
        block.forward = stub(index)
    device = _device_of(model)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            with suppress(_StopForward):
                model(input_ids=batch, use_cache=False)
            if state["retry"]:  # only ever on the first batch, which block 0 alone has recorded
                state.update(retry=False, tuple=True)
                hidden_states.clear()
                per_block[0].clear()
                with suppress(_StopForward):
                    model(input_ids=batch, use_cache=False)
                if state["retry"]:
                    raise UnsupportedArchitectureError(
                        f"cannot calibrate {type(model).__name__}: its loop over the blocks does not pass "
                        "each block's output on to the next"
                    )
    finally:
        for block, own in zip(blocks, own_forwards, strict=True):
            del block.forward
            if own is not None:
                block.forward = own
    first = BlockInputs(hidden_states, per_block[0])
    return CapturedInputs(first, per_block)


def block_output(output: Any) -> torch.Tensor:
    """Decoder blocks return a tensor or a tuple whose first item is the hidden states."""
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """The block's outputs for every batch; when streaming, each forward's freed heap goes back at once."""
    outputs = []
    with inputs.autocast():
        for hidden, args, kwargs in inputs.calls():
            outputs.append(block_output(block(hidden, *args, **kwargs)).to(hidden.dtype))
            release_forward_heap()
    return outputs


@contextmanager
def record_inputs(
    layers: list[LinearLayer], sink: Callable[[LinearLayer, torch.Tensor], None]
) -> Iterator[None]:
    """Call `sink(layer, input)` with the 2-D input [tokens, in_features] of each layer on every forward."""

    def make_hook(layer: LinearLayer):
        def hook(module, args):
            sink(layer, args[0].detach().reshape(-1, layer.in_features))

        return hook

    handles = [layer.module.register_forward_pre_hook(make_hook(layer)) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def record_stage(
    block: nn.Module,
    inputs: BlockInputs,
    layers: list[LinearLayer],
    sink: Callable[[LinearLayer, torch.Tensor], None],
) -> None:
    """Run the block on every batch, handing `sink` the inputs of `layers`, and stop each forward
    as soon as all of them have had theirs: nothing after the stage is computed."""
    pending: set[str] = set()

    def record(layer: LinearLayer, tensor: torch.Tensor) -> None:
        sink(layer, tensor)
        pending.discard(layer.name)
        if not pending:
            raise _StopForward

    with record_inputs(layers, record), inputs.autocast():
        for hidden, args, kwargs in inputs.calls():
            pending.update(layer.name for layer in layers)
            with suppress(_StopForward):
                block(hidden, *args, **kwargs)


def sequential_stages(block: nn.Module, inputs: BlockInputs) -> list[list[LinearLayer]]:
    """The block's linear layers grouped by shared input, in execution order (one probe forward).

    Layers that read the very same tensor (q, k and v after the attention norm; gate and up after
    the MLP norm) form one stage; the order is the order in which the stages fire. A stage keeps
    only a weak reference to the tensor its layers read: while that tensor lives no other can take
    its address, and once the forward drops it, its memory is free (holding every layer's input
    until the probe ended cost four of them at once, the MLP's widest among them).
    """
    stages: list[list[LinearLayer]] = []
    read: list[weakref.ref] = []  # per stage, the tensor its layers read
    seen: set[str] = set()

    def storage_of(tensor: torch.Tensor) -> int:
        return tensor.untyped_storage().data_ptr()

    def make_hook(layer: LinearLayer):
        def hook(module, args):
            if layer.name in seen:  # a module called twice belongs to the stage of its first call
                return
            seen.add(layer.name)
            tensor = args[0]
            for stage, ref in zip(stages, read, strict=True):
                alive = ref()
                if alive is not None and storage_of(alive) == storage_of(tensor):
                    stage.append(layer)
                    return
            stages.append([layer])
            read.append(weakref.ref(tensor))

        return hook

    handles = [
        layer.module.register_forward_pre_hook(make_hook(layer)) for layer in find_linear_layers(block)
    ]
    try:
        run_block(block, BlockInputs(inputs.hidden[:1], inputs.arguments[:1], inputs.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return stages


def _signature(block: nn.Module, layers: list[LinearLayer]) -> tuple:
    """What decides a block's stages: its class and its linear layers (names, kinds, shapes)."""
    shapes = [
        (layer.name, type(layer.module).__name__, layer.in_features, layer.out_features) for layer in layers
    ]
    return (type(block).__name__, *shapes)


class StagePlan:
    """Stages per kind of block: decoders repeat one block, so the probe forward runs once per
    kind (once per model, for every architecture we support) instead of once per block."""

    def __init__(self) -> None:
        self._names: dict[tuple, list[list[str]]] = {}

    def stages(self, block: nn.Module, inputs: BlockInputs) -> list[list[LinearLayer]]:
        layers = find_linear_layers(block)
        signature = _signature(block, layers)
        if signature not in self._names:
            found = sequential_stages(block, inputs)
            self._names[signature] = [[layer.name for layer in stage] for stage in found]
            return found
        by_name = {layer.name: layer for layer in layers}
        return [[by_name[name] for name in stage] for stage in self._names[signature]]


#: A technique's per-block step: given the block, its inputs and its stages, transform it in place.
BlockTransform = Callable[[int, nn.Module, BlockInputs, list[list[LinearLayer]]], None]
#: Called with (index, block) around each block: loading it from disk before, writing and freeing it after.
BlockHook = Callable[[int, nn.Module], None]


def no_hook(index: int, block: nn.Module) -> None:
    """The default residency: every block already in memory, nothing written as it finishes."""


def calibrate_sequentially(
    model: nn.Module,
    layout: DecoderLayout,
    input_ids: torch.Tensor,
    transform: BlockTransform,
    batch_size: int = 8,
    description: str = "calibrating",
    before_block: BlockHook = no_hook,
    after_block: BlockHook = no_hook,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Drive `transform` over every block, feeding each block the outputs of the transformed previous one.

    `before_block` and `after_block` let a caller keep blocks on disk (stream them in, write and
    free them once their outputs are computed), so only one block is resident at a time. `dtype`
    is what block forwards compute their matmuls in.
    """
    captured = capture_block_inputs(model, layout, input_ids, batch_size)
    inputs = captured.first
    inputs.dtype = dtype
    plan = StagePlan()
    with console.progress() as bar:
        task = bar.add_task(description, total=len(layout.blocks), status="")
        for index, block in enumerate(layout.blocks):
            before_block(index, block)
            stages = plan.stages(block, inputs)
            transform(index, block, inputs, stages)
            following = captured.per_block[min(index + 1, len(layout.blocks) - 1)]
            inputs = BlockInputs(run_block(block, inputs), following, dtype)
            after_block(index, block)
            bar.update(task, advance=1, status=f"block {index + 1}/{len(layout.blocks)}")
