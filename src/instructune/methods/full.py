"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from typing import Any


def apply(model: Any, **_: Any) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
