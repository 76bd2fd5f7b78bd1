"""evaluate_records end to end on the tiny model: keys, metrics, the fixed limit subset, errors."""

from __future__ import annotations

import math
from typing import Any

import pytest

from instructune.errors import InstructuneError
from instructune.evaluation import evaluate
from instructune.evaluation.evaluate import evaluate_records, select

CHOICES = {"pos": "positive", "neg": "negative"}
CLS = [{"id": "r1", "task": "classification", "template": "t", "prompt": "Review: wonderful and funny. Sentiment?",
        "completion": "positive", "label": "pos"},
       {"id": "r2", "task": "classification", "template": "t", "prompt": "Review: dull, no plot. Sentiment?",
        "completion": "negative", "label": "neg"},
       {"id": "r3", "task": "classification", "template": "t", "prompt": "Review: great film. Sentiment?",
        "completion": "positive", "label": "pos"}]
SUM = [{"id": f"s{i}", "task": "summarization", "template": "h", "prompt": f"Write a headline. {text}",
        "completion": head} for i, (text, head) in enumerate([
            ("The government announced new taxes on business today.", "New taxes on business"),
            ("The team won the match after a late goal.", "Late goal wins the match"),
            ("Technology companies face new rules.", "New rules for tech"),
            ("Fans celebrated in the streets.", "Fans celebrate")])]


def test_classification_generate(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    out = evaluate_records(model, tok, CLS, task="classification", choices=CHOICES,
                           metrics=["accuracy", "f1"], max_new_tokens=6, batch_size=2)
    assert set(out) == {"metrics", "predictions", "settings", "timings", "truncated"}
    m = out["metrics"]
    assert {"accuracy", "f1", "invalid", "invalid_rate", "cross_entropy", "perplexity"} <= set(m)
    assert set(m["detail"]["per_class"]) == {"pos", "neg"}
    rows = out["predictions"]
    assert [r["id"] for r in rows] == ["r1", "r2", "r3"]
    assert set(rows[0]) == {"id", "prompt", "reference", "prediction", "label", "predicted_label", "correct"}
    assert rows[0]["prompt"].startswith("<|im_start|>user\nReview: wonderful")
    assert m["accuracy"] == sum(r["correct"] for r in rows) / 3
    assert m["invalid"] == sum(r["predicted_label"] == "invalid" for r in rows)
    assert math.isclose(m["perplexity"], math.exp(m["cross_entropy"]))
    assert out["timings"]["examples_per_s"] > 0 and out["truncated"] == 0
    assert out["settings"]["n"] == 3 and out["settings"]["chat_template"] is True


def test_classification_likelihood_never_invalid(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    out = evaluate_records(model, tok, CLS, task="classification", choices=CHOICES, metrics=["accuracy"],
                           mode="likelihood", shots=1, train_records=CLS)
    rows = out["predictions"]
    assert all(r["predicted_label"] in CHOICES and r["prediction"] == CHOICES[r["predicted_label"]] for r in rows)
    assert out["metrics"]["invalid"] == 0
    assert out["metrics"]["accuracy"] == sum(r["correct"] for r in rows) / 3
    # one exemplar as an earlier chat turn, never the record itself
    assert all(r["prompt"].count("<|im_start|>user") == 2 for r in rows)
    assert all(r["prompt"].count(f"{next(c['prompt'] for c in CLS if c['id'] == r['id'])}") == 1 for r in rows)


def test_likelihood_perplexity_comes_from_the_scores_without_a_second_pass(chat_model: tuple[Any, Any],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # every reference is its label's choice text, so the gold choice's log-probability is the reference's:
    # the perplexity equals the separate pass's (a reference that is not a choice text takes that pass)
    model, tok = chat_model
    kwargs = dict(task="classification", choices=CHOICES, metrics=["accuracy"], mode="likelihood", shots=1,
                  train_records=CLS, batch_size=2)
    other = [{**r, "completion": r["completion"] + "!"} if r["id"] == "r2" else r for r in CLS]
    slow = evaluate_records(model, tok, other, **kwargs)
    expected = evaluate.mean_completion_ce(model, tok, [r["prompt"] for r in slow["predictions"]],
                                           [r["completion"] for r in CLS], max_length=None)
    calls = []
    real = evaluate.mean_completion_ce
    monkeypatch.setattr(evaluate, "mean_completion_ce", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = evaluate_records(model, tok, CLS, **kwargs)
    assert calls == []
    assert fast["metrics"]["cross_entropy"] == pytest.approx(expected[0], rel=1e-4)
    assert fast["metrics"]["perplexity"] == pytest.approx(expected[1], rel=1e-4)
    evaluate_records(model, tok, other, **kwargs)
    assert calls == [1]
    skipped = evaluate_records(model, tok, SUM[:2], task="summarization", choices=None, metrics=["rouge"],
                               max_new_tokens=4, perplexity=False)
    assert calls == [1] and skipped["metrics"]["cross_entropy"] is None and "rougeL" in skipped["metrics"]


def test_summarization_reports_rouge_and_bleu(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    out = evaluate_records(model, tok, SUM, task="summarization", choices=None, metrics=["rouge", "bleu"],
                           max_new_tokens=8, stop="eos")
    m = out["metrics"]
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "cross_entropy", "perplexity"} <= set(m)
    assert set(m["detail"]["rouge1"]) == {"precision", "recall"}
    assert all(0 <= m[k] <= 1 for k in ("rouge1", "rouge2", "rougeL")) and 0 <= m["bleu"] <= 100
    assert "label" not in out["predictions"][0]


def test_limit_takes_the_same_subset_every_time(plain_model: tuple[Any, Any]) -> None:
    records = [dict(r, id=f"s{i:02d}") for i, r in enumerate(SUM * 5)]
    first = [r["id"] for r in select(records, 5, seed=0)]
    assert first == sorted(first) and len(set(first)) == 5
    assert [r["id"] for r in select(list(reversed(records)), 5, seed=0)] == first  # record order does not matter
    model, tok = plain_model
    runs = [evaluate_records(model, tok, records, task="summarization", choices=None, metrics=["rouge"], limit=5,
                             max_new_tokens=4, shots=shots, train_records=SUM) for shots in (0, 2)]
    assert [r["id"] for r in runs[0]["predictions"]] == [r["id"] for r in runs[1]["predictions"]] == first
    assert runs[1]["predictions"][0]["prompt"].count("\n\n") == 2  # plain-text blocks without a chat template


@pytest.mark.parametrize("kwargs,message", [
    ({"metrics": []}, "lists no metric"),
    ({"records": []}, "evaluation split is empty"),
    ({"shots": 2}, "needs exemplars from a train split"),
    ({"metrics": ["accuracy", "bertscore"]}, "unknown metric.*'bertscore'.*known metrics: accuracy, f1"),
    ({"mode": "beam"}, "unknown mode 'beam'"),
    ({"choices": None}, "needs `choices`"),
])
def test_errors_name_the_problem(chat_model: tuple[Any, Any], kwargs: dict, message: str) -> None:
    model, tok = chat_model
    args = {"records": CLS, "task": "classification", "choices": CHOICES, "metrics": ["accuracy"]} | kwargs
    with pytest.raises(InstructuneError, match=message):
        evaluate_records(model, tok, **args)


def test_all_problems_are_reported_together(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    with pytest.raises(InstructuneError, match=r"3 problems") as e:
        evaluate_records(model, tok, [], task="classification", choices=CHOICES, metrics=[], mode="beam")
    assert "empty" in str(e.value) and "no metric" in str(e.value)


def test_record_label_outside_choices_is_reported(chat_model: tuple[Any, Any]) -> None:
    model, tok = chat_model
    bad = [*CLS, dict(CLS[0], id="r4", label="neutral")]
    with pytest.raises(InstructuneError, match="record 'r4': label 'neutral' is not among"):
        evaluate_records(model, tok, bad, task="classification", choices=CHOICES, metrics=["accuracy"])
