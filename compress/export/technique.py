"""`export` as a registered technique: a recipe stage can end in a GGUF (`export: {type: q4_0}`).

Its command line is `compress export gguf MODEL` (a group, so other formats can join it), written
in `compress.cli` from this same declaration with `format` fixed.
"""

from __future__ import annotations

from typing import Any

from compress.export.config import FLOAT_TYPES, ExportConfig
from compress.technique import RecipeData, Technique, calibration_defaults, library_runner, register


def _recipe_data(config: ExportConfig, data: RecipeData) -> dict[str, Any]:
    """The recipe's calibration text for a stage whose llama.cpp quantizer reads it (a quantized
    type): a float export would refuse it, and sampling options without text mean nothing."""
    if config.type in FLOAT_TYPES or data.calib is None:
        return {}
    return calibration_defaults(config, data)


EXPORT = register(
    Technique(
        name="export",
        config=ExportConfig,
        run=library_runner("compress.export.runner:export_gguf"),
        summary=lambda config: f"export {config.format} {config.type}",
        help="Write a GGUF file for llama.cpp (lossless from a matching GPTQ/AWQ/RTN grid).",
        recipe_data=_recipe_data,
        command=False,
        epilog=(
            "Examples:\n\n"
            "  compress export gguf ./my-model --type q4_k_m --calib data.txt\n\n"
            "  compress quantize ./my-model -m gptq --bits 4 --sym --group-size 32 --out out/gptq\n\n"
            "  compress export gguf out/gptq --type q4_0 --out out/gptq-q4_0"
        ),
    )
)
