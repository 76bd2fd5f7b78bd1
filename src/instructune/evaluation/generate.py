"""Batched, left-padded, KV-cached generation.

Prompts are sorted by token length so a batch pads little, left-padded so every row's next
token sits at the same position, and decoded by `model.generate` with the KV cache. With
`stop_at_newline`, a per-row stopping criterion ends each row at its first newline (after any
leading whitespace) and the batch ends as soon as every row has a newline or EOS, instead of
running to `max_new_tokens` and cutting afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from instructune.progress import Progress
from instructune.types import Model, Tokenizer

MAX_BATCH_TOKENS = 8192
"""Padded tokens one scoring or generation batch may hold: a batch of long conversations is split
(16 prompts of 7,000 tokens would need their attention over 16 x 7,000^2 positions at once)."""


def batches(items: list[Any], size: int, desc: str | None = None, lengths: list[int] | None = None,
            max_tokens: int | None = None) -> Iterator[list[Any]]:
    """`items` in slices of at most `size`, and with `lengths` (one per item) of at most `max_tokens`
    padded tokens; with `desc`, its progress: a bar in a terminal once the work lasts 2 s, a status
    line elsewhere whenever nothing was printed for a few seconds (`instructune.progress`)."""
    max_tokens = max_tokens or MAX_BATCH_TOKENS
    with Progress(len(items), desc) if desc else contextlib.nullcontext() as bar:
        i = 0
        while i < len(items):
            n = min(size, len(items) - i)
            if lengths is not None:
                n, width = 1, lengths[i]
                while n < size and i + n < len(items) and (n + 1) * max(width, lengths[i + n]) <= max_tokens:
                    width, n = max(width, lengths[i + n]), n + 1
            yield items[i:i + n]
            if bar is not None:
                bar.update(n)
            i += n


@dataclass
class Generation:
    """Completions in input order, plus what it cost."""

    texts: list[str]
    truncated: int
    """Prompts longer than `max_prompt_tokens`, cut from the left (their end, the question, is kept)."""
    new_tokens: int
    """Generated tokens, padding and EOS excluded."""
    seconds: float

    @property
    def examples_per_s(self) -> float:
        return len(self.texts) / self.seconds if self.seconds > 0 else float("inf")


class NewlineStop(StoppingCriteria):
    """Per row: done once the generated text, leading whitespace aside, contains a newline.

    `generate` pads rows that are done while the others go on and stops the batch when none is
    left. Only the newest token of each row is decoded per step (cached by id), so the check
    costs microseconds next to a forward pass.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pieces: dict[int, str] = {}
        self.started: list[bool] = []
        self.done: list[bool] = []

    def _piece(self, token: int) -> str:
        if token not in self.pieces:
            self.pieces[token] = self.tokenizer.decode([token], skip_special_tokens=True)
        return self.pieces[token]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if len(self.done) != input_ids.shape[0]:  # first step of a new batch
            self.started, self.done = [False] * input_ids.shape[0], [False] * input_ids.shape[0]
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if self.done[row]:
                continue
            piece = self._piece(token)
            if not self.started[row]:
                piece = piece.lstrip()  # a newline before the answer does not end it
                self.started[row] = bool(piece)
            self.done[row] = "\n" in piece
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def encode_prompts(tokenizer: Tokenizer, texts: list[str],
                   max_prompt_tokens: int | None) -> tuple[list[list[int]], int]:
    """Token ids of each already-formatted text, keeping the last `max_prompt_tokens`; and how many were cut."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    if max_prompt_tokens is None:
        return ids, 0
    cut = sum(len(x) > max_prompt_tokens for x in ids)
    return [x[-max_prompt_tokens:] for x in ids], cut


def eos_ids(model: Model, tokenizer: Tokenizer) -> list[int]:
    """EOS ids of the generation config and of the tokenizer (a chat model's end-of-turn may be only one)."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def autocast(model: Model, dtype: str) -> Any:
    """bf16 autocast on the model's device when asked and the weights are fp32; otherwise a no-op that
    leaves an enclosing autocast (a bf16 training run's validation) in force."""
    if dtype == "bfloat16" and next(model.parameters()).dtype == torch.float32:
        return torch.autocast(device_type=model.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def generate_batch(model: Model, tokenizer: Tokenizer, texts: list[str], max_new_tokens: int = 64, batch_size: int = 16,
                   temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, stop_at_newline: bool = False,
                   max_prompt_tokens: int | None = None, dtype: str = "float32") -> Generation:
    """Complete each already-formatted text (greedy when temperature is 0); report truncation and speed.

    `dtype="bfloat16"` runs fp32 weights under bf16 autocast (faster on CPUs with AMX, slightly
    different numbers). Output order matches `texts`.
    """
    torch.manual_seed(seed)
    start = time.perf_counter()
    ids, truncated = encode_prompts(tokenizer, texts, max_prompt_tokens)
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(texts)
    new_tokens = 0
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for idx in batches(order, batch_size, desc="generate", lengths=[len(ids[i]) + max_new_tokens for i in order]):
        enc = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, padding=True, padding_side="left",
                            return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        stop = StoppingCriteriaList([NewlineStop(tokenizer)] if stop_at_newline else [])
        with autocast(model, dtype):
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=eos_ids(model, tokenizer), stopping_criteria=stop, **sampling)
        rows = gen[:, enc["input_ids"].shape[1]:]
        new_tokens += int((rows != pad).sum())
        for i, row in zip(idx, rows, strict=True):
            text = tokenizer.decode(row, skip_special_tokens=True)
            out[i] = text.lstrip().split("\n")[0] if stop_at_newline else text
    return Generation(out, truncated, new_tokens, time.perf_counter() - start)


def generate(model: Model, tokenizer: Tokenizer, texts: list[str], max_new_tokens: int = 64, batch_size: int = 16,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, stop_at_newline: bool = False,
             max_prompt_tokens: int | None = None, dtype: str = "float32") -> list[str]:
    """Complete each already-formatted text; greedy when temperature is 0. See `generate_batch`."""
    return generate_batch(model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          temperature=temperature, top_p=top_p, seed=seed, stop_at_newline=stop_at_newline,
                          max_prompt_tokens=max_prompt_tokens, dtype=dtype).texts
