"""A sweep's forgetting objective: the `sweep.forgetting:` block and the unit its trials are compared in.

The suite is built twice, on two held-out splits: on validation rows for the trials (the search
chooses on them: the second objective, `forgetting_budget`) and on test rows for the chosen
configuration's one final score. Its measures are combined as

    mean relative drop = mean over measures of drop / |before|     (`forgetting.measures.relative_drop`)

so an accuracy and a cross-entropy in nats per token count alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from instructune.forgetting.kinds import general_probe, read_measures, text_perplexity
from instructune.forgetting.measures import HeldOut, probe_capacity
from instructune.forgetting.suite import RetentionSuite, RetentionTask, suite_spec
from instructune.hardware import eval_dtype
from instructune.training.config import TrainConfig

SECOND_OBJECTIVE = "mean relative drop"
"""The forgetting objective's name, as sweep.json and the tables carry it."""


@dataclass
class SweepForgetting:
    """The `sweep.forgetting:` block: a retention suite as in `instructune forgetting`, built on validation
    rows for the trials (the search chooses on it) and on test rows for the chosen configuration's final score."""

    retention: list[RetentionTask] = field(default_factory=list)
    """Tasks to keep, each a source with one template (`{source: bbc-news, template: topic, limit: 16}`)."""
    probe_prompts: int = 16
    """General-behaviour probe: prompts from each half of the shipped list (0 = off, at most 32)."""
    probe_tokens: int = 32
    """Longest original answer generated for the probe."""
    text_source: str | None = None
    """Plain-text perplexity probe: a pack (or file) whose held-out texts are scored (null = off)."""
    text_limit: int = 16
    """Texts in the perplexity probe."""
    text_words: int = 120
    """Each probe text is cut to this many words."""
    bootstrap_samples: int = 200
    """Resamples for the 95% intervals of the drops."""
    measures: dict[str, dict] = field(default_factory=dict)
    """Further kinds of retention measure (`forgetting/kinds/`), each by its key with its options
    (`{my-measure: {limit: 8}}`)."""

    def problems(self) -> list[str]:
        out = [] if self.retention or self.probe_prompts or self.text_source or self.measures else [
            "give at least one measure: retention, probe_prompts, text_source or measures"]
        read_measures(self.measures, "", out)
        if not 0 <= self.probe_prompts <= probe_capacity():
            out.append(f"probe_prompts must be 0 to {probe_capacity()}, got {self.probe_prompts}")
        return out

    def suite(self, cfg: TrainConfig, seed: int, *, held_out: HeldOut) -> RetentionSuite:
        """The suite on `held_out` rows of the run's split (no target: a trial's target score is its validation)."""
        spec = suite_spec(self.retention, general_probe.Options(self.probe_prompts, self.probe_tokens),
                          text_perplexity.Options(self.text_source, self.text_limit, self.text_words),
                          read_measures(self.measures, "", []))
        return RetentionSuite.build(spec, cfg.data.split, seed, eval_dtype(cfg.precision, cfg.model, log=None),
                                    held_out=held_out)
