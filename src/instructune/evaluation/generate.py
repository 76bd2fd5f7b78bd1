"""Batched, left-padded, KV-cached generation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int = 64, batch_size: int = 16,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, stop_at_newline: bool = False,
             max_prompt_tokens: int | None = None) -> list[str]:
    """Complete each already-formatted text; greedy when temperature is 0.

    Texts are sorted by length so a batch pads little, left-padded so every row ends at the
    same position, and decoded with the KV cache. Output order matches `texts`.
    """
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    try:
        for idx in batches(order, batch_size):
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False,
                            truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 **sampling)
            for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:], strict=False):
                text = tokenizer.decode(row, skip_special_tokens=True)
                out[i] = text.split("\n")[0] if stop_at_newline else text
    finally:
        tokenizer.padding_side = side
    return out
