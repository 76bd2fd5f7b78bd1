"""Likelihood scoring of completions, as lm-evaluation-harness scores multiple choice.

For each (prompt, completion) the model reads prompt + completion once; the score is
log p(completion | prompt) = sum_t log softmax(logits_{t-1})[x_t] over the completion tokens.
Prompts are already formatted (chat template applied by the caller); completions are appended
as-is. Rows are right-padded, so every real token keeps its position and a batched score equals
the one-at-a-time score up to float rounding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from instructune.evaluation.generate import autocast, batches
from instructune.evaluation.metrics import cross_entropy

NORMALIZE = ("none", "tokens", "chars")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_pairs(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
                 max_length: int | None = None) -> list[tuple[list[int], int]]:
    """(ids of prompt + completion, number of completion tokens at its end) for each pair.

    The pair is tokenised whole, so the tokens are the ones the model would see; the completion
    is what follows the longest prefix shared with the prompt's own tokens (if a BPE merge spans
    the boundary, the merged token counts as completion). An empty prompt gets the BOS (or EOS)
    token as context so the first completion token is scored. Beyond `max_length` the prompt is
    cut from the left.
    """
    whole = tokenizer([p + c for p, c in zip(prompts, completions, strict=True)], add_special_tokens=False)
    context = tokenizer(list(prompts), add_special_tokens=False)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for ids, ctx in zip(whole["input_ids"], context["input_ids"], strict=True):
        n_ctx = _common_prefix(ids, ctx)
        if n_ctx == 0:
            ids, n_ctx = [start, *ids], 1
        if max_length is not None and len(ids) > max_length:
            cut = len(ids) - max_length
            ids, n_ctx = ids[cut:], max(n_ctx - cut, 1)  # at least one token of context
        out.append((ids, len(ids) - n_ctx))
    return out


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes it on
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@torch.inference_mode()
def completion_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
                        batch_size: int = 16, max_length: int | None = None,
                        dtype: str = "float32") -> list[tuple[float, int]]:
    """Summed log-probability (nats) and token count of each completion given its prompt.

    Only the positions that predict completion tokens go through the vocabulary projection
    (`logits_to_keep` as a boolean mask), which spares the (B, T, V) logits of the prompts.
    """
    pairs = encode_pairs(tokenizer, prompts, completions, max_length)
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))  # similar lengths share a batch
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    slim = _accepts_logits_to_keep(model)
    for idx in batches(order, batch_size):
        enc = tokenizer.pad({"input_ids": [pairs[i][0] for i in idx]}, padding=True, padding_side="right",
                            return_tensors="pt")
        keep = torch.zeros_like(enc["input_ids"], dtype=torch.bool)  # (B, T): positions whose logits we need
        targets = []
        for row, i in enumerate(idx):
            ids, k = pairs[i]
            keep[row, len(ids) - k - 1:len(ids) - 1] = True  # logits at t predict token t + 1
            targets += ids[len(ids) - k:]
        if not targets:
            continue
        with autocast(model, dtype):
            logits = model(input_ids=enc["input_ids"].to(model.device),
                           attention_mask=enc["attention_mask"].to(model.device),
                           **({"logits_to_keep": keep.to(model.device)} if slim else {})).logits
        logits = logits if logits.dim() == 2 else logits[keep.to(logits.device)]  # (sum k, V), row by row
        logp = torch.log_softmax(logits.float(), dim=-1)
        token_lp = logp.gather(-1, torch.tensor(targets, device=logp.device)[:, None])[:, 0]
        counts = [pairs[i][1] for i in idx]
        for i, lp, k in zip(idx, token_lp.split(counts), counts, strict=True):
            out[i] = (float(lp.sum()), k)
    return out


def classify_by_likelihood(model: Any, tokenizer: Any, prompts: Sequence[str], choices: dict[str, str],
                           batch_size: int = 16, normalize: str = "none", max_length: int | None = None,
                           dtype: str = "float32") -> list[str]:
    """The label whose answer text is most likely after each prompt (one forward pass per pair, batched).

    `normalize`: "none" compares summed log-likelihoods (lm-eval `acc`); "tokens" divides by
    the answer's token count; "chars" by its character count (lm-eval `acc_norm`), which removes
    the bias towards short answers.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    labels = list(choices)
    flat_prompts = [p for p in prompts for _ in labels]
    flat_answers = [choices[label] for _ in prompts for label in labels]
    scores = completion_logprobs(model, tokenizer, flat_prompts, flat_answers, batch_size, max_length, dtype)
    picked = []
    for i in range(len(prompts)):
        row = scores[i * len(labels):(i + 1) * len(labels)]
        denoms = {"none": [1] * len(labels), "tokens": [n for _, n in row],
                  "chars": [len(choices[label]) for label in labels]}[normalize]
        normed = [logp / max(d, 1) for (logp, _), d in zip(row, denoms, strict=True)]
        picked.append(labels[max(range(len(labels)), key=normed.__getitem__)])
    return picked


def mean_completion_ce(model: Any, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
                       batch_size: int = 16, max_length: int | None = None,
                       dtype: str = "float32") -> tuple[float, float]:
    """Mean cross-entropy per completion token (nats, pooled over all tokens) and its perplexity."""
    scores = completion_logprobs(model, tokenizer, prompts, completions, batch_size, max_length, dtype)
    ce = cross_entropy([-lp for lp, _ in scores], [n for _, n in scores])
    return ce["cross_entropy"], ce["perplexity"]
