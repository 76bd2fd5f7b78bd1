"""Evaluation metrics: pure functions of predictions and references.

Classification metrics treat a prediction that maps to no answer choice ("invalid") as wrong:
it is a false negative of the true class, never a false positive of a class of its own, and
it is reported separately as `invalid` / `invalid_rate`. ROUGE and BLEU are the reference
implementations (`rouge_score`, `sacrebleu`), not re-implementations.

`compute` returns a flat dict of floats; a key with a slash (`rouge1/precision`,
`per_class/positive/f1`) is a detail under the headline number.

The registry sits on the bottom floor, beside `errors` and `config`, because every part names its
metrics: a template lists the ones that score it (`data/`), training and the forgetting monitor
rank by their direction, reports chart them, evaluation computes them.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sacrebleu
from rouge_score import rouge_scorer

from instructune.errors import InstructuneError
from instructune.types import JSON

INVALID = "invalid"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_WORD = re.compile(r"\w+")
_PUNCT = set(string.punctuation)


# ----------------------------------------------------------------------------- mapping answers to labels

def words(text: str) -> list[str]:
    """Lowercased words with punctuation and whitespace dropped: "Positive!" -> ["positive"]."""
    return _WORD.findall(text.lower())


def _contains(seq: list[str], sub: list[str]) -> bool:
    n = len(sub)
    return n > 0 and any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


def map_to_label(text: str, choices: dict[str, str]) -> str:
    """Map a generated answer to a label through its answer text, or return "invalid".

    In order: the answer's words equal one choice's words; the answer starts with exactly one
    choice (the longest, so "not good" beats "not"); exactly one choice occurs in it as whole
    words. An answer naming two choices ("positive, not negative") is invalid, not a guess.
    """
    answer = words(text)
    options = {label: words(t) for label, t in choices.items()}
    exact = [label for label, w in options.items() if w and w == answer]
    if len(exact) == 1:
        return exact[0]
    prefix = [label for label, w in options.items() if w and answer[:len(w)] == w]
    if prefix:
        longest = max(len(options[label]) for label in prefix)
        prefix = [label for label in prefix if len(options[label]) == longest]
        if len(prefix) == 1:
            return prefix[0]
    inside = [label for label, w in options.items() if _contains(answer, w)]
    return inside[0] if len(inside) == 1 else INVALID


# ----------------------------------------------------------------------------- classification

def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference; "invalid" is always wrong."""
    _same_length(predictions, references)
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def classification_report(predictions: Sequence[str], references: Sequence[str],
                          labels: Sequence[str] | None = None) -> JSON:
    """Per-class precision/recall/F1/support, their macro average, and the invalid count and rate.

    Classes are `labels` (the answer choices) or, by default, every label seen in the references
    or the valid predictions. A ratio with a zero denominator is 0, as in scikit-learn's
    `zero_division=0`.
    """
    _same_length(predictions, references)
    classes = list(labels) if labels is not None else sorted((set(references) | set(predictions)) - {INVALID})
    per_class = {}
    for c in classes:
        tp = sum(p == c and r == c for p, r in zip(predictions, references, strict=True))
        n_pred = sum(p == c for p in predictions)
        n_true = sum(r == c for r in references)
        precision, recall = _ratio(tp, n_pred), _ratio(tp, n_true)
        per_class[c] = {"precision": precision, "recall": recall,
                        "f1": _ratio(2 * precision * recall, precision + recall), "support": n_true}
    invalid = sum(p == INVALID for p in predictions)
    macro = {m: sum(v[m] for v in per_class.values()) / max(len(per_class), 1) for m in ("precision", "recall", "f1")}
    return {**macro, "per_class": per_class, "invalid": invalid, "invalid_rate": invalid / len(predictions)}


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


# ----------------------------------------------------------------------------- text

def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to the reference after `normalize_answer`."""
    _same_length(predictions, references)
    pairs = zip(predictions, references, strict=True)
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in pairs) / len(references)


def token_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean SQuAD token-overlap F1 (for free-text answers, where "f1" means this)."""
    _same_length(predictions, references)
    scores = []
    for p, r in zip(predictions, references, strict=True):
        pt, rt = normalize_answer(p).split(), normalize_answer(r).split()
        common = sum((Counter(pt) & Counter(rt)).values())
        if not pt or not rt:
            scores.append(float(pt == rt))
            continue
        precision, recall = _ratio(common, len(pt)), _ratio(common, len(rt))
        scores.append(_ratio(2 * precision * recall, precision + recall))
    return sum(scores) / len(scores)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, dict[str, float]]:
    """ROUGE-1/2/L/Lsum precision, recall and F1 (rouge_score, Porter stemmer), each a mean over examples."""
    _same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = {t: {"precision": 0.0, "recall": 0.0, "f1": 0.0} for t in ROUGE_TYPES}
    for p, r in zip(predictions, references, strict=True):
        for t, s in scorer.score(target=r, prediction=p).items():  # argument order: reference first
            totals[t]["precision"] += s.precision
            totals[t]["recall"] += s.recall
            totals[t]["f1"] += s.fmeasure
    return {t: {k: v / len(references) for k, v in d.items()} for t, d in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, 0-100 scale), one reference per example."""
    _same_length(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


# ----------------------------------------------------------------------------- likelihood

def cross_entropy(nll_sums: Sequence[float], token_counts: Sequence[int]) -> dict[str, float]:
    """Mean cross-entropy per token (nats) and perplexity = exp(CE), pooled over all completion tokens.

    CE = sum_i NLL_i / sum_i n_i: a long completion weighs by its tokens, as in a training loss.
    """
    n = sum(token_counts)
    if n == 0:
        raise InstructuneError("cross-entropy over zero completion tokens: every completion is empty; "
                               "check the records' `completion` field.")
    ce = sum(nll_sums) / n
    return {"cross_entropy": ce, "perplexity": math.exp(ce)}


# ----------------------------------------------------------------------------- dispatch

def _classification(name: str) -> Callable[..., dict[str, float]]:
    def run(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None) -> dict[str, float]:
        if labels is None and name != "f1":
            raise InstructuneError(f"metric '{name}' needs class labels (a classification template with "
                                   "`choices`); for free-text answers use exact_match, f1, rouge or bleu.")
        if labels is None:  # free text: SQuAD token F1
            return {"f1": token_f1(predictions, references)}
        report = classification_report(predictions, references, labels)
        out = {name: report[name], "invalid": float(report["invalid"]), "invalid_rate": report["invalid_rate"]}
        out.update({f"per_class/{c}/{k}": float(v) for c, d in report["per_class"].items() for k, v in d.items()})
        return out
    return run


def _rouge(predictions: Sequence[str], references: Sequence[str],
           labels: Sequence[str] | None = None) -> dict[str, float]:
    out = {}
    for t, d in rouge(predictions, references).items():
        out[t] = d["f1"]
        out[f"{t}/precision"], out[f"{t}/recall"] = d["precision"], d["recall"]
    return out


@dataclass(frozen=True)
class Metric:
    """A number evaluation reports: which way is better, and how a template asks for it."""

    higher_is_better: bool
    compute: Callable[..., dict[str, float]] | None = None
    """f(predictions, references, labels=None) -> scores; None for a score other code computes
    (cross-entropy from likelihoods, the invalid rate, one of ROUGE's keys)."""
    headline: bool = True
    """Shown in result tables."""
    chart: int | None = None
    """Charted when a report picks a few scores: lower ranks first."""


METRICS: dict[str, Metric] = {  # in the order result tables show them
    "accuracy": Metric(True, lambda p, r, labels=None: {"accuracy": accuracy(p, r)}, chart=0),
    "f1": Metric(True, _classification("f1"), chart=1),
    "invalid_rate": Metric(False),
    "rouge": Metric(True, _rouge, headline=False),  # reports the four ROUGE keys below
    "rouge1": Metric(True, chart=5),
    "rouge2": Metric(True),
    "rougeL": Metric(True, chart=2),
    "rougeLsum": Metric(True, headline=False),
    "bleu": Metric(True, lambda p, r, labels=None: {"bleu": bleu(p, r)}, chart=3),
    "exact_match": Metric(True, lambda p, r, labels=None: {"exact_match": exact_match(p, r)}, chart=4),
    "cross_entropy": Metric(False),
    "precision": Metric(True, _classification("precision"), headline=False),
    "recall": Metric(True, _classification("recall"), headline=False),
    "perplexity": Metric(False, headline=False),
    "loss": Metric(False, headline=False),
}
HEADLINE = [name for name, m in METRICS.items() if m.headline]
"""The scores result tables show, in order."""
TEMPLATE_METRICS = [name for name, m in METRICS.items() if m.compute]
"""The metrics a template may list."""
CHART = sorted((name for name, m in METRICS.items() if m.chart is not None), key=lambda n: METRICS[n].chart)
"""The scores a report charts, best first."""


def higher_is_better(name: str) -> bool:
    """Whether a larger value of this score is better (unknown scores: yes)."""
    return METRICS[name].higher_is_better if name in METRICS else True


def check_names(metric_names: Sequence[str]) -> None:
    """Raise one error naming every unknown metric and listing the known ones."""
    unknown = [m for m in metric_names if m not in TEMPLATE_METRICS]
    if unknown:
        raise InstructuneError(f"unknown metric{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                               f"known metrics: {', '.join(TEMPLATE_METRICS)}. Fix the template's `metrics` list.")


def compute(metric_names: Sequence[str], predictions: Sequence[str], references: Sequence[str],
            labels: Sequence[str] | None = None) -> dict[str, float]:
    """Compute each named metric; `labels` (the class labels) makes f1/precision/recall per-class + macro.

    Without `labels`, "f1" is the SQuAD token F1 of free-text answers.
    """
    check_names(metric_names)
    _same_length(predictions, references)
    out: dict[str, float] = {}
    for name in metric_names:
        out.update(METRICS[name].compute(predictions, references, labels=labels))
    return out


def _same_length(predictions: Sequence[object], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise InstructuneError("no examples to score: the evaluation split is empty; check the data pack.")
