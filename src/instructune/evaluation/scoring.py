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

import torch

from instructune.evaluation.generate import autocast, batches
from instructune.metrics import cross_entropy
from instructune.types import Model, Tokenizer

NORMALIZE = ("none", "tokens", "chars")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_pairs(tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str],
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


def _accepts_logits_to_keep(model: Model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes it on
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@torch.inference_mode()
def completion_logprobs(model: Model, tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str],
                        batch_size: int = 16, max_length: int | None = None,
                        dtype: str = "float32") -> list[tuple[float, int]]:
    """Summed log-probability (nats) and token count of each completion given its prompt.

    Only the positions that predict completion tokens go through the vocabulary projection
    (`logits_to_keep` as a boolean mask), which spares the (B, T, V) logits of the prompts.
    """
    pairs = encode_pairs(tokenizer, prompts, completions, max_length)
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))  # similar lengths share a batch
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    slim = _accepts_logits_to_keep(model) and not _prompt_learning(model)  # prompt tuning shifts every position
    for idx in batches(order, batch_size, desc="score", lengths=[len(pairs[i][0]) for i in order]):
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
        if logits.dim() == 3:  # full logits; prompt tuning prepends its virtual tokens: keep the last T positions
            logits = logits[:, -keep.shape[1]:][keep.to(logits.device)]  # (sum k, V), row by row
        logp = torch.log_softmax(logits.float(), dim=-1)
        token_lp = logp.gather(-1, torch.tensor(targets, device=logp.device)[:, None])[:, 0]
        counts = [pairs[i][1] for i in idx]
        for i, lp, k in zip(idx, token_lp.split(counts), counts, strict=True):
            out[i] = (float(lp.sum()), k)
    return out


def classify_by_likelihood(model: Model, tokenizer: Tokenizer, prompts: Sequence[str], choices: dict[str, str],
                           batch_size: int = 16, normalize: str = "none", max_length: int | None = None,
                           dtype: str = "float32") -> list[str]:
    """The label whose answer text is most likely after each prompt.

    Each prompt is read once and its key/value cache is shared by the answers (see
    `choice_logprobs`), so C choices cost one prompt pass plus C short answer passes.
    `normalize`: "none" compares summed log-likelihoods (lm-eval `acc`); "tokens" divides by
    the answer's token count; "chars" by its character count (lm-eval `acc_norm`), which removes
    the bias towards short answers.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    rows = choice_logprobs(model, tokenizer, prompts, list(choices.values()), batch_size, max_length, dtype)
    return pick_choices(rows, choices, normalize)


def pick_choices(rows: Sequence[Sequence[tuple[float, int]]], choices: dict[str, str],
                 normalize: str = "none") -> list[str]:
    """The label of the best-scoring answer in each row of `choice_logprobs` (answers in `choices` order)."""
    labels = list(choices)
    answers = [choices[label] for label in labels]
    picked = []
    for row in rows:
        denoms = {"none": [1] * len(labels), "tokens": [n for _, n in row],
                  "chars": [len(a) for a in answers]}[normalize]
        normed = [logp / max(d, 1) for (logp, _), d in zip(row, denoms, strict=True)]
        picked.append(labels[max(range(len(labels)), key=normed.__getitem__)])
    return picked


def choice_logprobs(model: Model, tokenizer: Tokenizer, prompts: Sequence[str], answers: Sequence[str],
                    batch_size: int = 16, max_length: int | None = None,
                    dtype: str = "float32") -> list[list[tuple[float, int]]]:
    """(summed log-probability, token count) of every answer after every prompt, prompt read once.

    The tokens are exactly those of `encode_pairs` (prompt + answer tokenised whole). The tokens
    all answers of a prompt share go through the model once, left-padded in a batch, with
    explicit positions; the cache is then repeated per answer and only the answer tokens are
    run. Equal to scoring every pair separately (`completion_logprobs`) up to float rounding.
    Prompt-learning adapters (prompt or prefix tuning), which manage the cache themselves, and
    prompts whose answers share no tokens (left truncation) are scored pair by pair.
    """
    pairs = [encode_pairs(tokenizer, [p] * len(answers), answers, max_length) for p in prompts]
    shared = [_shared_len(row) for row in pairs]
    out: list[list[tuple[float, int]]] = [[] for _ in prompts]
    slow = [i for i, n in enumerate(shared) if n < 1] if not _prompt_learning(model) else list(range(len(prompts)))
    if slow:
        flat = completion_logprobs(model, tokenizer, [prompts[i] for i in slow for _ in answers],
                                   [a for _ in slow for a in answers], batch_size, max_length, dtype)
        for j, i in enumerate(slow):
            out[i] = flat[j * len(answers):(j + 1) * len(answers)]
    fast = sorted(set(range(len(prompts))) - set(slow), key=lambda i: -shared[i])
    for idx in batches(fast, max(1, batch_size // max(len(answers), 1)), desc="score choices"):
        for i, row in zip(idx, _shared_prompt_batch(model, tokenizer, [pairs[i] for i in idx],
                                                    [shared[i] for i in idx], dtype), strict=True):
            out[i] = row
    return out


def _shared_len(row: list[tuple[list[int], int]]) -> int:
    """Tokens every answer's sequence starts with, within the prompt part of each."""
    n = min(len(ids) - k for ids, k in row)
    for ids, _ in row[1:]:
        n = min(n, _common_prefix(row[0][0], ids))
    return n


def _prompt_learning(model: Model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return config is not None and getattr(config, "is_prompt_learning", False)


@torch.inference_mode()
def _shared_prompt_batch(model: Model, tokenizer: Tokenizer, rows: list[list[tuple[list[int], int]]], shared: list[int],
                         dtype: str) -> list[list[tuple[float, int]]]:
    n_ans, width = len(rows[0]), max(shared)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = model.device
    prefix = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (row, n) in enumerate(zip(rows, shared, strict=True)):
        prefix[b, width - n:] = torch.tensor(row[0][0][:n])  # left padding: the last column is every prompt's end
        mask[b, width - n:] = 1
    tails = [ids[n:] for row, n in zip(rows, shared, strict=True) for ids, _ in row]  # B*C, answer-major per prompt
    t_len = max(len(t) for t in tails)
    tail = torch.full((len(tails), t_len), pad, dtype=torch.long)
    tail_mask = torch.zeros((len(tails), t_len), dtype=torch.long)
    for r, t in enumerate(tails):
        tail[r, :len(t)] = torch.tensor(t)
        tail_mask[r, :len(t)] = 1
    starts = torch.tensor(shared).repeat_interleave(n_ans)
    with autocast(model, dtype):
        first = model(input_ids=prefix.to(dev), attention_mask=mask.to(dev), use_cache=True,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(dev),
                      **({"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}))
        cache = first.past_key_values
        cache.batch_repeat_interleave(n_ans)
        rest = model(input_ids=tail.to(dev), past_key_values=cache, use_cache=True,
                     attention_mask=torch.cat([mask.repeat_interleave(n_ans, 0), tail_mask], 1).to(dev),
                     position_ids=(starts[:, None] + torch.arange(t_len)[None]).to(dev)).logits
    # logits predicting tail token j: the prompt's last position for j = 0, tail position j - 1 after
    logits = torch.cat([first.logits[:, -1:].repeat_interleave(n_ans, 0), rest[:, :-1]], 1)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tail.to(dev)[..., None])[..., 0]
    out = []
    for b, row in enumerate(rows):
        scored = []
        for c, (_, k) in enumerate(row):
            r, t = b * n_ans + c, len(tails[b * n_ans + c])
            scored.append((float(logp[r, t - k:t].sum()), k))
        out.append(scored)
    return out


def mean_completion_ce(model: Model, tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str],
                       batch_size: int = 16, max_length: int | None = None,
                       dtype: str = "float32") -> tuple[float, float]:
    """Mean cross-entropy per completion token (nats, pooled over all tokens) and its perplexity."""
    scores = completion_logprobs(model, tokenizer, prompts, completions, batch_size, max_length, dtype)
    ce = cross_entropy([-lp for lp, _ in scores], [n for _, n in scores])
    return ce["cross_entropy"], ce["perplexity"]
