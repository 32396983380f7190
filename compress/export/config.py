"""`compress export gguf`'s options (no torch: the CLI's --help builds from this)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Every `--type`, in llama-quantize's spelling: floats, the legacy 32-blocks, the k-quants.
GGUF_TYPES = (
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
    "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
)  # fmt: skip
#: Types a packed artifact's grid can be written in without rounding again (see export.blocks).
LOSSLESS_TYPES = {"q4_0": "Q4_0", "q8_0": "Q8_0"}
#: Types written as floats by us (the GGML type of each); the others come from llama.cpp's quantizer.
FLOAT_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
#: Calibration window length and seed when --calib is given without them (llama.cpp's imatrix: 512).
DEFAULT_SEQ_LEN, DEFAULT_SEED = 512, 0


class ExportConfig(BaseModel):
    """What `export` writes: one GGUF of `type`. Dense sources are rounded by llama.cpp's own
    quantizer (its per-tensor policy, as llama-quantize); our packed artifacts go over losslessly
    when their grid is the type's block, and are refused otherwise.

    An option that would do nothing is refused rather than ignored: calibration (and its window
    count, length and seed) only weights llama.cpp's quantizer, and `threads` only sizes it, so a
    float type takes neither, and the sampling options need --calib. (A packed source, whose
    blocks go over as they are, is refused with --calib by the runner, which knows the source.)
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["gguf"] = Field("gguf", description="Target format (llama.cpp's GGUF).")
    type: str = Field(
        "q8_0",
        description="GGUF tensor type: " + ", ".join(GGUF_TYPES) + ".",
    )
    calib: str | None = Field(
        None,
        description="Calibration text (any data source): an importance matrix for llama.cpp's quantizer "
        "(as llama-quantize --imatrix), when it quantizes a float model.",
    )
    calib_samples: int | None = Field(
        None, ge=1, description="Calibration windows (default: 128, or as many as a shorter text holds)."
    )
    seq_len: int | None = Field(
        None, ge=16, description="Calibration window length (default 512, what llama.cpp's imatrix uses)."
    )
    seed: int | None = Field(None, description="Calibration sampling seed (default 0).")
    threads: int | None = Field(
        None, ge=1, description="Threads for llama.cpp's quantizer (default: torch's thread count)."
    )

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: object) -> object:
        text = str(value).lower()
        if text not in GGUF_TYPES:
            raise ValueError(f"unknown GGUF type '{value}'; choose one of: {', '.join(GGUF_TYPES)}")
        return text

    @model_validator(mode="after")
    def _options_that_act(self) -> ExportConfig:
        if self.calib is None:
            for name in ("calib_samples", "seq_len", "seed"):
                if getattr(self, name) is not None:
                    flag = "--" + name.replace("_", "-")
                    raise ValueError(
                        f"{flag} sets how --calib text is sampled; it does nothing without --calib"
                    )
        if self.type in FLOAT_TYPES:
            if self.calib is not None:
                raise ValueError(
                    f"--calib weights llama.cpp's quantizer, which --type {self.type} does not run; "
                    "drop --calib, or choose a quantized --type such as q4_k_m"
                )
            if self.threads is not None:
                raise ValueError(
                    f"--threads sizes llama.cpp's quantizer, which --type {self.type} does not run; "
                    "drop --threads"
                )
        if self.calib is not None:
            self.seq_len = DEFAULT_SEQ_LEN if self.seq_len is None else self.seq_len
            self.seed = DEFAULT_SEED if self.seed is None else self.seed
        return self
