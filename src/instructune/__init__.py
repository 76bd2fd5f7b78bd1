"""instructune: instruction fine-tuning of language models.

Templates turn datasets into prompt-completion pairs; full fine-tuning and PEFT methods train on
them; evaluation and forgetting measures say what was gained and what was lost.

    import instructune

    result = instructune.train("configs/lora-rotten-tomatoes.yaml", ["max_steps=20"])

The functions (`train`, `evaluate`, `forgetting`, `sequential`, `sweep`, `load_config`) live in
`instructune.api`; they are imported on first use, so `import instructune` (and the command line's
`--help`) stays instant.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["evaluate", "forgetting", "load_config", "sequential", "sweep", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from instructune import api  # deferred: torch and transformers load only when a function is used

        return getattr(api, name)
    raise AttributeError(f"module 'instructune' has no attribute {name!r}")
