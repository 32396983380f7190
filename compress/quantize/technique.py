"""`quantize` as a registered technique: the CLI command, the recipe stage and the pipeline's runner."""

from __future__ import annotations

from compress.quantize.config import CALIBRATED_METHODS, QuantizeConfig
from compress.technique import RecipeData, Technique, calibration_defaults, library_runner, register


def _recipe_data(config: QuantizeConfig, data: RecipeData) -> dict:
    return calibration_defaults(config, data) if config.method in CALIBRATED_METHODS else {}


register(
    Technique(
        name="quantize",
        config=QuantizeConfig,
        run=library_runner("compress.quantize.runner:quantize"),
        summary=lambda config: f"quantize {config.method} {config.bits}-bit",
        help="Quantize a model's weights and write an artifact.",
        recipe_data=_recipe_data,
        epilog="Examples:\n\n  compress quantize ./my-model --bits 4 --calib data.jsonl\n\n"
        "  compress quantize ./my-model --method awq --bits 4 --asym\n\n"
        "  compress quantize meta-llama/Llama-3.2-1B --method nf4 --double-quant\n\n"
        "  compress quantize ./my-model --method fp16 --out out/fp16",
    )
)
