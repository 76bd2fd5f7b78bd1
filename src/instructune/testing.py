"""Tiny models for tests and smoke runs: a real byte-level BPE tokenizer and a 2-layer, 64-dim llama.

Built from scratch in a second, so tests never need a download.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import uvicorn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CORPUS = [
    "Classify the sentiment of this review as positive or negative.",
    "The movie was wonderful, moving and funny. Positive.",
    "A dull, lifeless film with no plot at all. Negative.",
    "Write a headline for this article. Summarize the news in one sentence.",
    "The government announced new taxes on business and technology companies today.",
    "The team won the match after a late goal; sport fans celebrated in the streets.",
    "What is the topic of this article? business, entertainment, politics, sport, tech",
    "Answer: positive negative neutral fresh rotten good bad great terrible",
] * 20


def tiny_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocab 512) with ChatML special tokens, optionally a chat template."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    if chat_template:
        fast.chat_template = CHATML
    return fast


def tiny_model(vocab_size: int, seed: int = 0, layers: int = 2, dim: int = 64) -> LlamaForCausalLM:
    """A randomly initialised llama causal LM: `layers` blocks of width `dim`, tied embeddings."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg)


def save_tiny(folder: str | Path, chat_template: bool = True, seed: int = 0) -> Path:
    """Write a tiny tokenizer + model folder loadable by `from_pretrained`."""
    folder = Path(folder)
    tok = tiny_tokenizer(chat_template)
    model = tiny_model(len(tok), seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@contextmanager
def serve_in_background(app: Callable[..., object], host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Run an ASGI `app` with uvicorn in a thread for the duration of the block; yields the bound port
    (0: a free one). The socket is bound here, so the port is ours before the server starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
