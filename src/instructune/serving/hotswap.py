"""Hot-swapping adapters on one base model: every adapter loaded into the same `PeftModel`.

Choosing one is `set_adapter` (a flag on each LoRA layer, no weights move), and the base is
`disable_adapter()`. One lock serialises use of the model; `generate` runs a batch, `stream` one
prompt in a thread, text arriving piece by piece.

Each adapter reads chat prompts as it was trained to: with the chat template saved in its folder
(a base model trained with `data.chat_format`), else the base tokenizer's, as `load_model` does for
one adapter. A chat prompt keeps its messages' content as text (`chat_prompt`, `encode`): a
special-token string a client writes is never a control token, so no message can forge a turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel
from transformers import StoppingCriteriaList, TextIteratorStreamer

from instructune.adapters.registry import check_base, read_adapter_config, resolve_adapter
from instructune.data import chat, chat_template
from instructune.errors import InstructuneError
from instructune.evaluation.generate import generate
from instructune.models import load_model
from instructune.types import Model, Tokenizer


class AdapterSet:
    """One base model in memory and any number of adapters on it, switched per call without a reload.

    Adapters of one peft type share one `PeftModel` over the base, each under an internal slot name
    (peft names must be valid module names; registry names may hold '.'); `use(name)` activates one
    (`set_adapter`) or, for None, the bare base (`disable_adapter()`), holding the lock. peft cannot put
    two adapter types on one module tree, so the first adapter of another type (IA3 beside LoRA, say)
    gets a second view of the base: loaded again from the same safetensors file, whose weights are
    memory-mapped, so the operating system keeps one copy of their pages for both.
    """

    def __init__(self, base: str, adapters: Mapping[str, str | Path] | None = None, dtype: str = "float32",
                 served_name: str | None = None) -> None:
        self.base_name, self.source, self.dtype = served_name or base, base, dtype
        self.base_model, self.tokenizer = load_model(base, dtype=dtype)
        self.lock = threading.RLock()
        self.groups: dict[str, PeftModel] = {}
        """peft type -> the PeftModel holding every adapter of that type (the first type over `base_model`)."""
        self.slots: dict[str, tuple[str, str]] = {}
        """adapter name -> (peft type, slot name)."""
        self.templates: dict[str, str | None] = {}
        """adapter name -> the chat template saved with it (None: it reads the base tokenizer's)."""
        for name, path in (adapters or {}).items():
            self.add(name, path)

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    @property
    def model(self) -> Model:
        """The model of the first adapter type (the base itself while no adapter is loaded)."""
        return next(iter(self.groups.values()), self.base_model)

    def add(self, name: str, adapter: str | Path) -> None:
        """Load an adapter (registry name or folder) next to the others under `name`."""
        if name == self.base_name or name in self.slots:
            raise InstructuneError(f"adapter name '{name}' is already taken (by the base or another adapter); "
                                   "give each adapter its own name (NAME=PATH).")
        folder = resolve_adapter(adapter)
        check_base(folder, self.base_model.config, self.base_name)
        peft_type = str(read_adapter_config(folder).get("peft_type"))
        slot = f"adapter_{len(self.slots)}"
        with self.lock:
            group = self.groups.get(peft_type)
            if group is not None:
                group.load_adapter(str(folder), adapter_name=slot)
            else:
                base = self.base_model if not self.groups else load_model(self.source, dtype=self.dtype)[0]
                group = self.groups[peft_type] = PeftModel.from_pretrained(base, str(folder), adapter_name=slot)
            group.eval()
        self.slots[name] = (peft_type, slot)
        self.templates[name] = chat_template.saved_template(folder)

    def chat_template(self, adapter: str | None) -> str | None:
        """The chat template `adapter` trained with (None: the base): its saved one, else the base tokenizer's."""
        return (self.templates.get(adapter) if adapter else None) or getattr(self.tokenizer, "chat_template", None)

    def chat_prompt(self, messages: list[dict[str, str]], adapter: str | None = None) -> str:
        """The messages and the generation prompt as `adapter` reads them; content that holds a special-token
        string stays marked (`chat.TEXT_OPEN` ... `chat.TEXT_CLOSE`), so `encode` keeps it text."""
        template = self.chat_template(adapter)
        if not template:
            raise InstructuneError(f"{adapter or self.base_name} has no chat template; send a raw prompt instead.")
        rendered = chat.render_marked(self.tokenizer, messages, generation=True, chat_template=template)
        out, at = [], 0
        for a, b in rendered.as_text:
            out += [rendered.text[at:a], chat.TEXT_OPEN, rendered.text[a:b], chat.TEXT_CLOSE]
            at = b
        return "".join(out) + rendered.text[at:]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of prompts: a `chat_prompt`'s marked content as text, all else as the tokenizer reads it."""
        return [prompt_ids(self.tokenizer, text) for text in texts]

    @contextmanager
    def use(self, adapter: str | None) -> Iterator[Model]:
        """Hold the model with `adapter` active (None: the base alone) for the duration of the block."""
        if adapter is not None and adapter not in self.slots:
            raise InstructuneError(f"unknown adapter '{adapter}'; loaded: {', '.join(self.slots) or 'none'}.")
        with self.lock:
            if not self.groups:
                yield self.base_model
            elif adapter is None:  # the first group wraps base_model in place: switch its adapters off
                with self.model.disable_adapter():
                    yield self.model
            else:
                peft_type, slot = self.slots[adapter]
                group = self.groups[peft_type]
                group.set_adapter(slot, inference_mode=True)  # no grads switched on
                yield group

    def generate(self, texts: list[str], adapter: str | None = None, **kwargs: object) -> list[str]:
        """`evaluation.generate.generate` with `adapter` active; kwargs pass through (max_new_tokens, ...)."""
        with self.use(adapter) as model:
            return generate(model, PromptTokenizer(self.tokenizer), texts, **kwargs)

    def stream(self, text: str, adapter: str | None = None, max_new_tokens: int = 64, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0) -> TokenStream:
        """Generate for one text in a thread; iterate the result for text pieces as tokens arrive."""
        return TokenStream(self, text, adapter, max_new_tokens, temperature, top_p, seed)


class TokenStream:
    """One generation running in a thread (holding the model lock), read piece by piece.

    `model.generate` feeds a TextIteratorStreamer; a stopping criterion counts the new tokens,
    notes whether the last was EOS, and ends generation once `close()` is called. Iterating
    re-raises an error from the generating thread.
    """

    def __init__(self, aset: AdapterSet, text: str, adapter: str | None, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int) -> None:
        tok, model = aset.tokenizer, aset.base_model
        ids = torch.tensor([prompt_ids(tok, text)])
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = sorted({*eos, tok.eos_token_id} - {None})  # a chat model's end-of-turn may be either one
        self.prompt_len, self.count, self.eos, self.failure = enc["input_ids"].shape[1], 0, False, None
        self.cancelled = threading.Event()
        self.streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else
                    {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})

        def work() -> None:
            try:
                with aset.use(adapter) as m, torch.inference_mode():
                    torch.manual_seed(seed)
                    m.generate(**enc, streamer=self.streamer, max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids,
                               pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([self._watch]),
                               **sampling)
            except Exception as e:
                self.failure = e
                self.streamer.end()  # wakes the reader

        self.thread = threading.Thread(target=work, name="instructune-stream", daemon=True)
        self.thread.start()

    def _watch(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> bool:
        self.count, self.eos = input_ids.shape[1] - self.prompt_len, int(input_ids[0, -1]) in self.eos_ids
        return self.cancelled.is_set()

    def __iter__(self) -> Iterator[str]:
        yield from self.streamer
        self.thread.join()
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Stop generating at the next token and wait for the thread (which frees the model lock)."""
        self.cancelled.set()
        self.thread.join(timeout=60)


def prompt_ids(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of a prompt; what lies between text markers (`AdapterSet.chat_prompt`) is encoded as text."""
    rendered = chat.parse(text) or chat.Rendered(chat.MARKERS.sub("", text), [], [])
    return chat.encode(tok, rendered, offsets=False)[0]


class PromptTokenizer:
    """A tokenizer that encodes prompts as `prompt_ids` does, for `evaluation.generate`, which calls it on
    the texts it completes; every other attribute is the tokenizer's own."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok

    def __call__(self, texts: str | list[str], **kwargs: object) -> Mapping[str, object]:
        if kwargs != {"add_special_tokens": False}:
            return self.tok(texts, **kwargs)
        ids = [prompt_ids(self.tok, t) for t in ([texts] if isinstance(texts, str) else texts)]
        return {"input_ids": ids[0] if isinstance(texts, str) else ids}

    def __getattr__(self, name: str) -> object:
        return getattr(self.tok, name)
