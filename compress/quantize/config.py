"""The one typed definition of a quantization request.

`QuantizeConfig` is the single source of truth: the CLI's flags map onto it one to one, a recipe
stage is its YAML form, and the manifest records it verbatim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.errors import CompressError, option_error
from compress.sizes import parse_size

if TYPE_CHECKING:
    import torch

Method = Literal["fp16", "bf16", "int8", "nf4", "fp4", "rtn", "gptq", "awq"]

#: Bit widths each method supports, and the method chosen when only `--bits` is given.
METHOD_BITS: dict[str, tuple[int, ...]] = {
    "fp16": (16,),
    "bf16": (16,),
    "int8": (8,),
    "nf4": (4,),
    "fp4": (4,),
    "rtn": (4, 2, 3, 5, 6, 7, 8),
    "gptq": (4, 2, 3, 8),
    "awq": (4, 3),
}
DEFAULT_METHOD_FOR_BITS: dict[int, str] = {16: "fp16", 8: "int8", 4: "gptq", 3: "gptq", 2: "gptq"}
CALIBRATED_METHODS = ("gptq", "awq")
DEFAULT_GROUP_SIZE = 128
PACKED_METHODS = ("rtn", "gptq", "awq")


class QuantizeConfig(BaseModel):
    """How to quantize. Options that a method does not use are recorded but ignored by it."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "fp16"
    bits: int = 16
    #: None: 128, or a layer's largest width divisor below 128; an explicit size must divide every width.
    group_size: int | None = None
    #: None: the method's convention (symmetric for RTN/GPTQ, a zero point for AWQ).
    sym: bool | None = None
    act_order: bool = True
    damp_percent: float = Field(0.01, gt=0, lt=1)
    calib: str | None = None
    #: None: 128 windows, or as many as a shorter --calib text holds (with a notice).
    calib_samples: int | None = Field(None, ge=1)
    seq_len: int = Field(2048, ge=16)
    seed: int = 0
    #: gptq/awq: the dtype calibration forwards compute their matmuls in (autocast; weights,
    #: Hessians and the hidden states between blocks stay float32). `auto`: bfloat16 where the
    #: device computes it natively, else float32; the manifest records the resolved dtype.
    calib_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    double_quant: bool = False
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    device: str = "auto"
    #: rtn/gptq/awq: keep the model on disk and stream one block at a time within this budget ("4GB").
    max_memory: str | None = None
    #: rtn/gptq/awq: keep unquantized tensors (embeddings, lm_head, norms) in the source's dtype;
    #: by default a float32 source's are stored in float16, as GPTQ/AWQ checkpoints do.
    keep_dtype: bool = False

    @model_validator(mode="after")
    def _bits_fit_method(self) -> QuantizeConfig:
        if self.bits not in METHOD_BITS[self.method]:
            supported = ", ".join(str(b) for b in sorted(METHOD_BITS[self.method]))
            raise ValueError(f"method {self.method} supports --bits {supported}, not {self.bits}")
        if self.group_size is not None and (self.group_size == 0 or self.group_size < -1):
            raise ValueError(f"--group-size must be -1 or positive, not {self.group_size}")
        if self.max_memory is not None:
            if self.method not in PACKED_METHODS:
                raise ValueError(
                    f"--max-memory streams blocks for rtn, gptq and awq; {self.method} loads the whole model"
                )
            self.max_memory_bytes  # noqa: B018 - parse now, so a bad size fails before any work
        return self

    def for_device(self, device: torch.device) -> QuantizeConfig:
        """This config with its `auto` choices made for `device`: what runs, and what the manifest
        records."""
        if self.calib_dtype != "auto":
            return self
        from compress.modeling import native_bf16

        return self.model_copy(update={"calib_dtype": "bfloat16" if native_bf16(device) else "float32"})

    @property
    def calib_torch_dtype(self) -> torch.dtype:
        """The calibration forwards' matmul dtype (`auto` unresolved counts as float32, the exact one)."""
        import torch

        return torch.bfloat16 if self.calib_dtype == "bfloat16" else torch.float32

    @property
    def max_memory_bytes(self) -> int | None:
        """`--max-memory` in bytes ("4GB", "512MiB", or a plain number of bytes)."""
        return None if self.max_memory is None else parse_size(self.max_memory, "--max-memory")

    @property
    def symmetric(self) -> bool:
        return self.method != "awq" if self.sym is None else self.sym

    @property
    def nominal_group_size(self) -> int:
        return DEFAULT_GROUP_SIZE if self.group_size is None else self.group_size

    @classmethod
    def from_options(cls, method: str | None, bits: int | None, **options) -> QuantizeConfig:
        """Build from CLI-style options, choosing the method from `bits` when none is named."""
        if method is None:
            chosen_bits = 16 if bits is None else bits
            if chosen_bits not in DEFAULT_METHOD_FOR_BITS:
                available = ", ".join(f"{b} ({m})" for b, m in DEFAULT_METHOD_FOR_BITS.items())
                raise CompressError(
                    f"no quantization method for --bits {chosen_bits}; available: {available}"
                )
            method = DEFAULT_METHOD_FOR_BITS[chosen_bits]
        if method not in METHOD_BITS:
            raise CompressError(f"unknown method '{method}'; choose one of {', '.join(METHOD_BITS)}")
        if bits is None:
            bits = METHOD_BITS[method][0]
        try:
            return cls(method=method, bits=bits, **{k: v for k, v in options.items() if v is not None})
        except ValueError as exc:
            raise CompressError(option_error(exc)) from exc
