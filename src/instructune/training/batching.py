"""Length-grouped batches with dynamic padding, in a seeded order that a resumed run replays exactly."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator

import torch

from instructune.data.tokenize import IGNORE_INDEX
from instructune.progress import Progress


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


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Examples concatenated into rows of at most `max_length` tokens (best fit, longest first).

    Position ids restart at 0 for each example, which is what tells the model's mask builder to keep
    attention inside each example (block-diagonal causal attention, the engine's own kernel); the
    first label of each example is -100, so no example is trained to predict the next one's start.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]["input_ids"]), i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row) kept sorted: the tightest row that fits is a bisect
    for i in order:
        n = len(examples[i]["input_ids"])
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            rows.append([i])
            bisect.insort(free, (max_length - n, len(rows) - 1))
        else:
            room, r = free.pop(k)
            rows[r].append(i)
            bisect.insort(free, (room - n, r))
    return [_joined([examples[i] for i in row]) for row in rows]


def _joined(parts: list[dict]) -> dict:
    ids, labels, positions = [], [], []
    for e in parts:
        n = len(e["input_ids"])
        ids += e["input_ids"]
        labels += [IGNORE_INDEX, *e["labels"][1:]]
        positions += range(n)
    return {"id": "+".join(str(e.get("id")) for e in parts), "input_ids": ids, "labels": labels,
            "position_ids": positions, "examples": len(parts)}


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch; labels are -100 on padding. Packed rows bring
    their position ids (padding then counts as one more example)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    packed = any("position_ids" in e for e in examples)
    positions = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
        if packed:
            positions[row, :n] = torch.tensor(e.get("position_ids", range(n)))
            positions[row, n:] = torch.arange(width - n)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {**out, "position_ids": positions} if packed else out


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of the token slots of all batches that are padding."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / slots if slots else 0.0


def completion_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                        only_completion_logits: bool) -> torch.Tensor:
    """Summed cross-entropy over completion tokens of a batch.

    The output layer (a 49k-word vocabulary on the default model) dominates the cost, and most
    positions are prompt tokens that carry no loss: with `only_completion_logits` the logits are
    computed only at positions where some row has a completion token next (`logits_to_keep`).
    Such a model (no virtual tokens) also gets no padding mask when the batch is right-padded, as
    `collate` pads: causal attention already hides every later position, the padding included,
    from each real token, so the losses are the same and the attention kernel needs no mask. Packed
    rows (`pack`) pass their position ids instead, from which transformers builds the
    block-diagonal mask.
    """
    labels = batch["labels"]
    targets = labels[:, 1:]  # position t predicts token t + 1
    if only_completion_logits:
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
        mask = batch["attention_mask"]
        right_padded = bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all())
        packed = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
        # no KV cache: training needs none, and a cache would stop transformers reading packed positions
        out = model(input_ids=batch["input_ids"], attention_mask=None if right_padded else mask,
                    logits_to_keep=keep, use_cache=False, **packed)
        logits, targets = out.logits, targets[:, keep]  # (B, K, V), (B, K)
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, -labels.shape[1]:-1]  # prompt-learning methods prepend virtual tokens
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


@torch.no_grad()  # no autograd graph: a validation pass used to hold a training step's activations
def validation_loss(model: torch.nn.Module, examples: list[dict], pad_id: int, batch_size: int = 16,
                    only_completion_logits: bool = True, max_tokens: int = 8192, desc: str = "loss") -> float:
    """Mean cross-entropy per completion token over `examples`, in batches of at most `batch_size`
    examples and `max_tokens` padded tokens (one long conversation must not make a batch's
    logits tens of GB); `desc` names it in progress lines."""
    total, count = 0.0, 0
    with Progress(len(examples), desc) as bar:
        for chunk in _token_batches(examples, batch_size, max_tokens):
            batch = {k: v.to(next(model.parameters()).device) for k, v in collate(chunk, pad_id).items()}
            total += float(completion_loss_sum(model, batch, only_completion_logits))
            count += int((batch["labels"][:, 1:] != -100).sum())
            bar.update(len(chunk))
    return total / max(count, 1)


def _token_batches(examples: list[dict], batch_size: int, max_tokens: int) -> Iterator[list[dict]]:
    """Consecutive examples, a batch closed when one more would pass either limit."""
    chunk: list[dict] = []
    for e in examples:
        width = max([len(e["input_ids"])] + [len(c["input_ids"]) for c in chunk])
        if chunk and (len(chunk) == batch_size or (len(chunk) + 1) * width > max_tokens):
            yield chunk
            chunk = []
        chunk.append(e)
    if chunk:
        yield chunk
