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
#: bitsandbytes' 4-bit methods: the only ones with quantized scales and a matmul dtype to choose.
BNB_4BIT_METHODS = ("nf4", "fp4")
DEFAULT_DAMP_PERCENT = 0.01
#: Bit widths of a quantized output head or embedding: 8 runs on the int8 kernel, 4 on the int4 one.
VOCAB_BITS = (8, 4)


class QuantizeConfig(BaseModel):
    """How to quantize. An option the chosen method does not use is refused, not recorded and
    ignored (`_options_apply`): `-m rtn --act-order` would otherwise claim an act-order artifact.

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
    #: None until validated: gptq's default (on) is filled in; any other method takes no value.
    act_order: Annotated[bool | None, flag("--act-order/--no-act-order")] = Field(
        None, description="GPTQ: columns by Hessian diagonal, static groups (default: on)."
    )
    damp_percent: float = Field(
        DEFAULT_DAMP_PERCENT, gt=0, lt=1, description="GPTQ: Hessian damping (raised if needed)."
    )
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
    head_bits: int | None = Field(
        None,
        description="rtn/gptq/awq: quantize the output head too: 8 (one scale per row, int8 kernel) or 4 "
        "(the artifact's groups, int4 kernel). Unset: float.",
    )
    embedding_bits: int | None = Field(
        None,
        description="rtn/gptq/awq: quantize the embedding table (rows dequantized as looked up): 8 or 4. "
        "Such an artifact runs on compress's runtime only. Unset: float.",
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
        for option, value in (("--head-bits", self.head_bits), ("--embedding-bits", self.embedding_bits)):
            if value is not None and value not in VOCAB_BITS:
                raise ValueError(f"{option} must be one of {', '.join(map(str, VOCAB_BITS))}, not {value}")
        if self.max_memory is not None:
            if self.method not in PACKED_METHODS:
                raise ValueError(
                    f"--max-memory streams blocks for rtn, gptq and awq; {self.method} loads the whole model"
                )
            self.max_memory_bytes  # noqa: B018 - parse now, so a bad size fails before any work
        return self._options_apply()

    def _options_apply(self) -> QuantizeConfig:
        """Refuse an option the method does not use, and fill in gptq's act-order default.

        Values are compared with the defaults (the command line passes every flag, so a default
        cannot be told from an explicit one there); the fields a method chooses itself default to
        None (`sym`, `group_size`, `act_order`, `calib`, `calib_samples`), so any value of them is
        the user's. `seq_len` is not checked for rtn: the quality tests build rtn and gptq configs
        with one window length.
        """
        method = self.method
        packed, calibrated = method in PACKED_METHODS, method in CALIBRATED_METHODS
        unused: list[tuple[bool, str, str]] = [
            (self.group_size is not None and not packed, "--group-size", "groups apply to rtn, gptq and awq"),
            (self.sym is not None and not packed, "--sym/--asym", "the grid applies to rtn, gptq and awq"),
            (self.keep_dtype and not packed, "--keep-dtype", "it applies to the packed rtn, gptq and awq"),
            (self.head_bits is not None and not packed, "--head-bits", "it applies to rtn, gptq and awq"),
            (
                self.embedding_bits is not None and not packed,
                "--embedding-bits",
                "it applies to rtn, gptq and awq",
            ),
            (self.act_order is not None and method != "gptq", "--act-order", "only gptq orders columns"),
            (
                self.damp_percent != DEFAULT_DAMP_PERCENT and method != "gptq",
                "--damp-percent",
                "only gptq damps a Hessian",
            ),
            (self.calib is not None and not calibrated, "--calib", "only gptq and awq calibrate"),
            (
                self.calib_samples is not None and not calibrated,
                "--calib-samples",
                "only gptq and awq calibrate",
            ),
            (self.calib_dtype != "auto" and not calibrated, "--calib-dtype", "only gptq and awq calibrate"),
            (
                self.seed != 0 and not calibrated,
                "--seed",
                "it samples the calibration windows of gptq and awq",
            ),
            (self.seq_len != 2048 and not packed, "--seq-len", "only gptq and awq calibrate"),
            (
                self.double_quant and method not in BNB_4BIT_METHODS,
                "--double-quant",
                "it applies to nf4 and fp4",
            ),
            (
                self.compute_dtype != "bfloat16" and method not in BNB_4BIT_METHODS,
                "--compute-dtype",
                "it applies to nf4 and fp4",
            ),
        ]
        for refused, option, why in unused:
            if refused:
                raise ValueError(f"{option} has no effect with --method {method} ({why}); leave it out")
        if self.group_fallback and (self.group_size is None or self.group_size == -1):
            given = "is unset" if self.group_size is None else "is -1 (whole rows)"
            raise ValueError(
                f"--group-fallback only changes an explicit --group-size that does not divide a width, "
                f"and --group-size {given}; give --group-size G, or leave --group-fallback out"
            )
        if method == "gptq" and self.act_order is None:
            self.act_order = True
        return self

    def for_device(self, device: torch.device) -> QuantizeConfig:
        """This config with its `auto` choices made for `device`: what runs, and what the manifest
        records."""
        if self.calib_dtype != "auto" or self.method not in CALIBRATED_METHODS:
            return self  # a method that does not calibrate keeps `auto`, which it is valid with
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
