"""instructune: instruction fine-tuning of language models.

Templates turn datasets into prompt-completion pairs; full fine-tuning and PEFT
methods train on them; evaluation and forgetting measures say what was gained
and what was lost.
"""

__version__ = "0.1.0"
