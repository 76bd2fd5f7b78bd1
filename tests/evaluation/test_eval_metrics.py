"""Metrics on hand-computed cases, and agreement with direct rouge-score / sacrebleu calls."""

from __future__ import annotations

import math
import random

import pytest

from instructune import metrics as M
from instructune.errors import InstructuneError

CHOICES = {"pos": "positive", "neg": "negative"}


@pytest.mark.parametrize("text,label", [
    ("Positive.", "pos"),
    ("  NEGATIVE!\n", "neg"),
    ("positive review, clearly", "pos"),          # starts with one choice
    ("The sentiment is negative.", "neg"),        # contains exactly one as a whole word
    ("It is positive or negative", "invalid"),    # contains both
    ("positively great", "invalid"),              # not a whole word
    ("neutral", "invalid"),
    ("", "invalid"),
])
def test_map_to_label(text: str, label: str) -> None:
    assert M.map_to_label(text, CHOICES) == label


def test_map_to_label_prefers_the_longest_prefix() -> None:
    choices = {"a": "not good", "b": "good"}
    assert M.map_to_label("Not good at all", choices) == "a"
    assert M.map_to_label("good", choices) == "b"
    assert M.map_to_label("very good", choices) == "b"  # "not good" is not in it


def test_accuracy_counts_invalid_as_wrong() -> None:
    assert M.accuracy(["a", "invalid", "b", "b"], ["a", "a", "b", "a"]) == 0.5


def test_three_class_confusion_with_an_invalid_prediction() -> None:
    refs = ["a", "a", "a", "b", "b", "c", "c", "c"]
    preds = ["a", "a", "b", "b", "invalid", "c", "a", "c"]
    rep = M.classification_report(preds, refs)
    # a: tp 2, predicted 3, true 3; b: tp 1, predicted 2, true 2; c: tp 2, predicted 2, true 3
    assert set(rep["per_class"]) == {"a", "b", "c"}  # invalid is not a class
    assert rep["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert rep["per_class"]["b"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert rep["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert rep["precision"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert rep["recall"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert rep["f1"] == pytest.approx((2 / 3 + 1 / 2 + 0.8) / 3)
    assert rep["invalid"] == 1 and rep["invalid_rate"] == 1 / 8
    flat = M.compute(["accuracy", "f1", "precision", "recall"], preds, refs, labels=["a", "b", "c"])
    assert flat["accuracy"] == 5 / 8
    assert flat["f1"] == pytest.approx(rep["f1"]) and flat["invalid_rate"] == 1 / 8
    assert flat["per_class/c/recall"] == pytest.approx(2 / 3)


def test_a_label_never_seen_counts_in_the_macro_average_when_listed() -> None:
    rep = M.classification_report(["a", "a"], ["a", "a"], labels=["a", "b"])
    assert rep["per_class"]["b"]["f1"] == 0.0 and rep["f1"] == 0.5


def test_exact_match_and_token_f1() -> None:
    assert M.exact_match(["The Eiffel Tower!", "Paris"], ["eiffel tower", "London"]) == 0.5
    # normalised: pred [cat, sat], ref [cat, sat, down] -> P 1, R 2/3, F1 0.8
    assert M.token_f1(["the cat sat"], ["cat sat down"]) == pytest.approx(0.8)
    assert M.compute(["f1"], ["the cat sat"], ["cat sat down"]) == pytest.approx({"f1": 0.8})


def test_rouge_hand_computed() -> None:
    r = M.rouge(["It is very cold outside"], ["It is cold outside"])
    assert r["rouge1"]["precision"] == pytest.approx(4 / 5) and r["rouge1"]["recall"] == pytest.approx(1.0)
    assert r["rouge2"]["precision"] == pytest.approx(2 / 4) and r["rouge2"]["recall"] == pytest.approx(2 / 3)
    assert r["rougeL"]["precision"] == pytest.approx(4 / 5) and r["rougeL"]["recall"] == pytest.approx(1.0)
    assert r["rougeLsum"]["f1"] == pytest.approx(2 * 0.8 / 1.8)
    assert r["rouge2"]["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    flat = M.compute(["rouge"], ["It is very cold outside"], ["It is cold outside"])
    assert flat["rouge1"] == pytest.approx(2 * 0.8 / 1.8) and flat["rouge2/recall"] == pytest.approx(2 / 3)


def test_bleu_hand_computed() -> None:
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # every n-gram precision is 1; brevity penalty exp(1 - 7/5)
    assert M.bleu(["a b c d e"], ["a b c d e f g"]) == pytest.approx(100 * math.exp(1 - 7 / 5), abs=1e-3)


def _random_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "park", "quickly", "slowly", "running", "runs", "cold", "warm", "outside", "inside", "is", "was"]
    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 15)))
    return [sentence() for _ in range(n)], [sentence() for _ in range(n)]


def test_rouge_and_bleu_agree_with_the_libraries() -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    preds, refs = _random_pairs(300)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(preds, refs, strict=True)]
    ours = M.rouge(preds, refs)
    for t in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[t]["precision"] == pytest.approx(sum(d[t].precision for d in direct) / 300, abs=1e-12)
        assert ours[t]["recall"] == pytest.approx(sum(d[t].recall for d in direct) / 300, abs=1e-12)
        assert ours[t]["f1"] == pytest.approx(sum(d[t].fmeasure for d in direct) / 300, abs=1e-12)
    assert 0 < ours["rouge1"]["f1"] < 1
    assert M.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score, abs=1e-12)


def test_cross_entropy_is_pooled_over_tokens() -> None:
    ce = M.cross_entropy([2.0, 4.0], [1, 3])
    assert ce["cross_entropy"] == 1.5 and ce["perplexity"] == pytest.approx(math.exp(1.5))
    with pytest.raises(InstructuneError, match="zero completion tokens"):
        M.cross_entropy([0.0], [0])


def test_compute_rejects_unknown_metrics_and_lists_the_known_ones() -> None:
    with pytest.raises(InstructuneError, match="unknown metrics 'bleurt', 'meteor'.*accuracy, f1"):
        M.compute(["accuracy", "bleurt", "meteor"], ["a"], ["a"])
    with pytest.raises(InstructuneError, match="needs class labels"):
        M.compute(["precision"], ["a"], ["a"])
    with pytest.raises(InstructuneError, match="empty"):
        M.compute(["accuracy"], [], [])
