"""The one typed definition of a quantization request.

`QuantizeConfig` is the single source of truth: the CLI's flags map onto it one to one, a recipe
stage is its YAML form, and the manifest records it verbatim.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from compress.errors import CompressError

Method = Literal["fp16", "bf16"]

#: Bit widths each method supports, and the method chosen when only `--bits` is given.
METHOD_BITS: dict[str, tuple[int, ...]] = {"fp16": (16,), "bf16": (16,)}
DEFAULT_METHOD_FOR_BITS: dict[int, str] = {16: "fp16"}


class QuantizeConfig(BaseModel):
    """How to quantize: method and bit width (more options arrive with the calibrated methods)."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "fp16"
    bits: int = 16
    device: str = "auto"

    @model_validator(mode="after")
    def _bits_fit_method(self) -> QuantizeConfig:
        if self.bits not in METHOD_BITS[self.method]:
            supported = ", ".join(str(b) for b in METHOD_BITS[self.method])
            raise ValueError(f"method {self.method} supports --bits {supported}, not {self.bits}")
        return self

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
            return cls(method=method, bits=bits, **options)
        except ValueError as exc:
            raise CompressError(_first_error(exc)) from exc


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("msg", exc)).removeprefix("Value error, ")
    return str(exc)
