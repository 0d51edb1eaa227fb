"""What an outputs channel file says (source kind `outputs`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OutputsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topics: list[str] = Field(
        default_factory=lambda: ["inference.completed", "study.cancelled", "order.changed", "report.final"],
        description="Internal topics read: results, cancelled studies (withdrawals), order changes (the RIS "
        "echoing the engine's own priority update) and the radiologists' final reports.",
    )
    raise_priority: bool = Field(
        True, description="Emit worklist.priority when a result suggests a higher priority than the order's."
    )
    sweep_s: float = Field(10.0, gt=0, description="How often recalled model versions' reports are looked for.")
