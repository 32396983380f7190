"""The one typed definition of a quantization request.

`QuantizeConfig` is the single source of truth: the CLI's flags map onto it one to one, a recipe
stage is its YAML form, and the manifest records it verbatim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.options import flag
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
    """How to quantize. Options that a method does not use are recorded but ignored by it.

    As on the command line, `bits` alone picks the method (4: gptq) and a method alone its first
    bit width (int8: 8, awq: 4); neither is fp16.
    """

    model_config = ConfigDict(extra="forbid")

    method: Annotated[Method, flag("--method", "-m", unset=True)] = Field(
        "fp16", description="Quantization method."
    )
    bits: Annotated[int, flag("--bits", "-b", unset=True)] = Field(
        16, description="Bit width; chooses the method if none given."
    )
    group_size: int | None = Field(
        None,
        description="Weights per scale (-1: whole row). Unset: the largest of 128, 64, 32 that divides "
        "every width, else per layer.",
    )
    group_fallback: bool = Field(
        False,
        description="With --group-size: a layer whose width it does not divide takes the largest kernel "
        "group (else divisor) below it, instead of an error (e.g. 32 for GGUF Q4_0 where widths allow).",
    )
    sym: Annotated[bool | None, flag("--sym/--asym")] = Field(
        None, description="Symmetric grid or one with a zero point (default: GPTQ/RTN sym, AWQ asym)."
    )
    act_order: bool = Field(True, description="GPTQ: columns by Hessian diagonal, static groups.")
    damp_percent: float = Field(0.01, gt=0, lt=1, description="GPTQ: Hessian damping (raised if needed).")
    calib: str | None = Field(None, description="Calibration text (any data source).")
    calib_samples: int | None = Field(
        None, ge=1, description="Calibration windows (default 128, or what a shorter --calib text holds)."
    )
    seq_len: int = Field(2048, ge=16, description="Calibration window length (capped by the model).")
    seed: int = Field(0, description="Calibration sampling seed.")
    #: Weights, Hessians and the hidden states between blocks stay float32 whatever this says; the
    #: manifest records the resolved dtype.
    calib_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="gptq/awq: calibration forwards' matmul dtype: auto (bfloat16 where native), "
        "bfloat16, float32.",
    )
    double_quant: bool = Field(False, description="nf4/fp4: quantize the scales too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="nf4/fp4: bfloat16, float16, float32."
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, …")
    max_memory: str | None = Field(
        None, description="rtn/gptq/awq: keep the model on disk and stream one block at a time (e.g. 8GB)."
    )
    keep_dtype: bool = Field(
        False,
        description="rtn/gptq/awq: store embeddings, lm_head and norms in the source's dtype (default: "
        "float16 for a float32 source).",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_and_bits(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        method, bits = data.get("method"), data.get("bits")
        if method is None:
            chosen_bits = 16 if bits is None else bits
            if chosen_bits not in DEFAULT_METHOD_FOR_BITS:
                available = ", ".join(f"{b} ({m})" for b, m in DEFAULT_METHOD_FOR_BITS.items())
                raise ValueError(f"no quantization method for --bits {chosen_bits}; available: {available}")
            method = DEFAULT_METHOD_FOR_BITS[chosen_bits]
        if method not in METHOD_BITS:  # the field's own check names it and the choices
            return data
        return {**data, "method": method, "bits": METHOD_BITS[method][0] if bits is None else bits}

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
