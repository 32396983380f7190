"""The typed request of structured pruning: what to remove and how units are ranked.

Imports no torch, so the CLI builds `compress prune`'s flags from it without paying for torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

HeadGrouping = Literal["auto", "groups", "per-group"]


class PruneConfig(BaseModel):
    """How to prune; the CLI's flags map onto it one to one and the manifest records it verbatim."""

    model_config = ConfigDict(extra="forbid")

    heads: float | None = Field(None, description="Fraction of query heads to remove.")
    heads_keep: int | None = Field(None, ge=1, description="Query heads to keep per layer.")
    head_grouping: HeadGrouping = Field(
        "auto",
        description="GQA: remove whole KV groups, the same number from every group, or whichever fits.",
    )
    mlp: float | None = Field(None, description="Fraction of MLP channels to remove.")
    mlp_size: int | None = Field(None, ge=1, description="MLP channels to keep per layer.")
    hidden: float | None = Field(None, description="Fraction of hidden channels to remove.")
    hidden_size: int | None = Field(None, ge=1, description="Hidden size to keep.")
    layers: int | None = Field(None, ge=0, description="Number of decoder blocks to remove.")
    layers_keep: int | None = Field(None, ge=1, description="Decoder blocks to keep.")
    importance: Literal["activation", "magnitude", "taylor", "random"] = Field(
        "activation", description="How heads, channels and neurons are ranked."
    )
    layer_importance: Literal["influence", "loss", "random"] = Field(
        "influence", description="How blocks are ranked."
    )
    calib: str | None = Field(None, description="Calibration text for importance (any data source).")
    calib_samples: int = Field(64, ge=1, description="Calibration windows.")
    seq_len: int = Field(256, ge=16, description="Calibration window length.")
    seed: int = Field(0, description="Sampling seed (and the random baseline's).")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, …")

    @model_validator(mode="after")
    def _one_target_each(self) -> PruneConfig:
        for fraction, absolute in (
            ("heads", "heads_keep"),
            ("mlp", "mlp_size"),
            ("hidden", "hidden_size"),
            ("layers", "layers_keep"),
        ):
            if getattr(self, fraction) is not None and getattr(self, absolute) is not None:
                raise ValueError(f"give --{fraction} or --{absolute.replace('_', '-')}, not both")
        for name in ("heads", "mlp", "hidden"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"--{name} is the fraction to remove and must lie in [0, 1), got {value}")
        return self._options_apply()

    def _options_apply(self) -> PruneConfig:
        """Refuse a ranking option for a dimension nothing is removed from: it would be recorded
        in the manifest and change nothing. (`importance` and the calibration options are not
        checked: distillation's students and the quality tests pass them with no width target or
        with a data-free ranking.)"""
        if self.head_grouping != "auto" and self.heads is None and self.heads_keep is None:
            raise ValueError(
                f"--head-grouping {self.head_grouping} has no effect without --heads or --heads-keep; "
                "leave it out"
            )
        if self.layer_importance != "influence" and not self.prunes_depth:
            raise ValueError(
                f"--layer-importance {self.layer_importance} ranks blocks, and no --layers or "
                "--layers-keep removes any; leave it out"
            )
        return self

    @property
    def prunes_width(self) -> bool:
        """A target for heads, MLP channels or hidden channels is given."""
        targets = (self.heads, self.heads_keep, self.mlp, self.mlp_size, self.hidden, self.hidden_size)
        return any(value is not None for value in targets)

    @property
    def prunes_depth(self) -> bool:
        """A target for whole decoder blocks is given."""
        return self.layers is not None or self.layers_keep is not None

    @property
    def needs_data(self) -> bool:
        width = self.importance in ("activation", "taylor")
        depth = self.layer_importance in ("influence", "loss")
        return (width and self.prunes_width) or (depth and self.prunes_depth)

    def summary(self) -> str:
        """`prune mlp 0.3, layers 2`: the targets given, for logs and tables."""
        targets = ("heads", "heads_keep", "mlp", "mlp_size", "hidden", "hidden_size", "layers", "layers_keep")
        given = [f"{name} {value}" for name in targets if (value := getattr(self, name)) is not None]
        return f"prune {', '.join(given)}"
