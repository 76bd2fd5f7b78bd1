"""Length-grouped batches with dynamic padding, in a seeded order that a resumed run replays exactly."""

from __future__ import annotations

import random
from typing import Any

import torch

from instructune.data.tokenize import IGNORE_INDEX


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                  megabatch: int = 32) -> list[list[int]]:
    """Index batches of one epoch: shuffled, then sorted by length within megabatches of
    `megabatch * batch_size` examples so a batch pads little yet the order stays random.

    The same (seed, epoch) always gives the same batches: a resumed run skips to its position.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        span = megabatch * batch_size
        order = [i for s in range(0, len(order), span)
                 for i in sorted(order[s:s + span], key=lambda i: -lengths[i])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch; labels are -100 on padding."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of the token slots of all batches that are padding."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / slots if slots else 0.0


def completion_loss_sum(model: Any, batch: dict[str, torch.Tensor], only_completion_logits: bool) -> torch.Tensor:
    """Summed cross-entropy over completion tokens of a batch.

    The output layer (a 49k-word vocabulary on the default model) dominates the cost, and most
    positions are prompt tokens that carry no loss: with `only_completion_logits` the logits are
    computed only at positions where some row has a completion token next (`logits_to_keep`).
    Such a model (no virtual tokens) also gets no padding mask when the batch is right-padded, as
    `collate` pads: causal attention already hides every later position, the padding included,
    from each real token, so the losses are the same and the attention kernel needs no mask.
    """
    labels = batch["labels"]
    targets = labels[:, 1:]  # position t predicts token t + 1
    if only_completion_logits:
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
        mask = batch["attention_mask"]
        right_padded = bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all())
        out = model(input_ids=batch["input_ids"], attention_mask=None if right_padded else mask,
                    logits_to_keep=keep)
        logits, targets = out.logits, targets[:, keep]  # (B, K, V), (B, K)
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, -labels.shape[1]:-1]  # prompt-learning methods prepend virtual tokens
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
