"""Adapters: a registry of trained peft adapters, hot-swapping on one base model, merging into a full model.

Registry: `$INSTRUCTUNE_HOME/adapters/<NAME>/` holds a copy of the adapter files
(`adapter_config.json`, `adapter_model.safetensors`), the run's `metrics.json` when there was
one, and `instructune-adapter.json`, a small record (base, method, parameter count, size, task,
scores). The folder stays a plain peft adapter folder: `PeftModel.from_pretrained` loads it.

Hot-swap: `AdapterSet` loads the base once and every adapter into the same `PeftModel`;
choosing one is `set_adapter` (a flag on each LoRA layer, no weights move), and the base is
`disable_adapter()`. One lock serialises use of the model; `generate` runs a batch,
`stream` one prompt in a thread, text arriving piece by piece.

Merge: `merge_adapter` folds the adapter into the base weights (`W + (alpha/r) B A`, peft's
`merge_and_unload`) and writes a folder plain transformers loads. A tied embedding/lm_head pair
is untied first, so a delta learnt on one side is not written into the other.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from instructune import hub
from instructune.errors import InstructuneError
from instructune.models import MODEL_PACKS, _fingerprint, _fingerprint_of, load_model, pack_dir, resolve_model

RECORD = "instructune-adapter.json"
WEIGHTS = "adapter_model.safetensors"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # always fullmatch: `$` would let a "\n" through


def adapters_root() -> Path:
    return hub.cache_root() / "adapters"


def validate_name(name: str) -> str:
    """A registry name is one path component: letters, digits, `.`, `_`, `-`; never `..`."""
    if not NAME_RE.fullmatch(name or "") or ".." in name:
        raise InstructuneError(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit, with no '/' and no '..' (example: sentiment-lora).")
    return name


def find_adapter_dir(path: str | Path) -> Path:
    """The adapter folder at `path`, or in its `adapter/` subfolder (a training run's folder)."""
    path = Path(path).expanduser()
    for folder in (path, path / "adapter"):
        if (folder / "adapter_config.json").is_file():
            if not (folder / WEIGHTS).is_file():
                raise InstructuneError(f"{folder} has adapter_config.json but no {WEIGHTS}; save the adapter with "
                                       "peft's save_pretrained (safetensors, the default).")
            return folder
    raise InstructuneError(f"{path} is not a peft adapter folder (no adapter_config.json there or in "
                           f"{path / 'adapter'}); point at the adapter folder a training run wrote.")


def _pack_name(base: str) -> str:
    """A pulled pack's folder shown as the pack's name; anything else unchanged."""
    for name in MODEL_PACKS:
        if Path(base).expanduser().resolve() == pack_dir(name).resolve():
            return name
    return base


def base_fingerprint(base: str | None) -> str | None:
    """`models._fingerprint` of a base named by pack name or folder; None when it cannot be read here."""
    if base in MODEL_PACKS:
        base = str(pack_dir(base))
    return _fingerprint_of(base)


def read_metrics(folder: Path) -> dict[str, Any]:
    """A training run's metrics.json, in the adapter folder or next to it; {} when there is none."""
    for path in (folder / "metrics.json", folder.parent / "metrics.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise InstructuneError(f"{path} line {e.lineno}: not valid JSON ({e.msg}); fix or delete it.") from None
            return data if isinstance(data, dict) else {}
    return {}


def describe(folder: Path) -> dict[str, Any]:
    """What an adapter folder holds: base, method, parameter count and size, read from its files."""
    from safetensors import safe_open

    config = json.loads((folder / "adapter_config.json").read_text())
    with safe_open(str(folder / WEIGHTS), framework="pt") as f:  # reads the header only, not the tensors
        params = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    base = config.get("base_model_name_or_path") or ""
    return {"base": _pack_name(base) if base else "", "base_fingerprint": base_fingerprint(base),
            "method": config.get("peft_type", "?"), "trainable_params": params,
            "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
            "config": {k: config[k] for k in ("r", "lora_alpha", "target_modules", "task_type") if k in config}}


def register_adapter(name: str, path: str | Path, task: str | None = None, base: str | None = None,
                     overwrite: bool = False) -> Path:
    """Copy an adapter into the registry as `name`; returns its registry folder.

    `base` (a pack name or folder) is checked against the base the adapter was trained on, by
    architecture fingerprint, and recorded. The copy is written to a temporary folder and
    renamed, so a registry entry appears whole or not at all.
    """
    validate_name(name)
    source = find_adapter_dir(path)
    info = describe(source)
    if base is not None:
        given = _fingerprint_of(resolve_model(base))
        if info["base_fingerprint"] and given and given != info["base_fingerprint"]:
            raise InstructuneError(
                f"adapter {source} was trained on base {info['base']} ({info['base_fingerprint']}), but --base {base} "
                f"is {given}; register it with --base {info['base']}, or pick the adapter trained on {base}.")
        info["base"], info["base_fingerprint"] = base, given or info["base_fingerprint"]
    metrics = read_metrics(source)
    root = adapters_root()
    final = root / name
    if final.exists() and not overwrite:
        raise InstructuneError(f"adapter '{name}' is already registered ({final}); remove it first with "
                               f"`instructune adapters remove {name}`, pass --force to replace it, or pick another name.")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for item in source.iterdir():
            if item.is_file() and item.name != RECORD:
                shutil.copy2(item, tmp / item.name)
        if metrics and not (tmp / "metrics.json").exists():
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        record = {"name": name, **info, "task": task or metrics.get("task"), "metrics": metrics.get("test") or {},
                  "source": str(source.resolve()), "registered": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        _swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an old `final` is moved aside first and deleted after."""
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def list_adapters() -> list[dict[str, Any]]:
    """Every registry record, by name (folders left by an interrupted copy start with '.' and are skipped)."""
    root = adapters_root()
    if not root.exists():
        return []
    return [get_adapter(p.name) for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.is_dir()]


def get_adapter(name: str) -> dict[str, Any]:
    """The record of a registered adapter, with its folder as `path`."""
    folder = adapters_root() / validate_name(name)
    if not (folder / RECORD).is_file():
        known = ", ".join(p.name for p in sorted(adapters_root().glob("[!.]*"))) or "none yet"
        raise InstructuneError(f"no adapter named '{name}' in the registry (registered: {known}); add it with "
                               f"`instructune adapters add {name} PATH`.")
    try:
        record = json.loads((folder / RECORD).read_text())
    except json.JSONDecodeError as e:
        raise InstructuneError(f"{folder / RECORD} line {e.lineno}: not valid JSON ({e.msg}); register the adapter "
                               f"again with `instructune adapters add {name} PATH --force`.") from None
    return {**record, "path": str(folder)}


def remove_adapter(name: str) -> None:
    """Delete a registry entry; the rename first means a half-deleted folder never looks registered."""
    folder = Path(get_adapter(name)["path"])
    doomed = folder.with_name(f".old-{name}-{uuid.uuid4().hex[:8]}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed)


def resolve_adapter(name_or_path: str | Path) -> Path:
    """A registered name -> its registry folder; otherwise an adapter folder on disk."""
    text = str(name_or_path)
    if NAME_RE.fullmatch(text) and ".." not in text and (adapters_root() / text / RECORD).is_file():
        return adapters_root() / text
    if not Path(text).expanduser().exists() and "/" not in text:
        get_adapter(text)  # raises: names the registered adapters
    return find_adapter_dir(text)


def adapter_base(folder: Path) -> tuple[str, str | None]:
    """(base, fingerprint) an adapter expects: its registry record if any, else its adapter_config.json."""
    if (folder / RECORD).is_file():
        record = json.loads((folder / RECORD).read_text())
        return record.get("base", ""), record.get("base_fingerprint")
    info = describe(folder)
    return info["base"], info["base_fingerprint"]


def check_base(folder: Path, model_config: Any, model_name: str) -> None:
    """Refuse an adapter made for a different base architecture, naming the base each side expects."""
    base, expected = adapter_base(folder)
    have = _fingerprint(model_config)
    if expected and expected != have:
        raise InstructuneError(f"adapter {folder} was trained on base {base} ({expected}), but the model is "
                               f"{model_name} ({have}); use --model {base}, or an adapter trained on {model_name}.")


class AdapterSet:
    """One base model in memory and any number of adapters on it, switched per call without a reload.

    Every adapter is loaded into the same `PeftModel` under an internal slot name (peft names
    must be valid module names; registry names may hold '.'). `use(name)` activates one
    (`set_adapter`) or, for None, the bare base (`disable_adapter()`), holding the lock.
    """

    def __init__(self, base: str, adapters: Mapping[str, str | Path] | None = None, dtype: str = "float32",
                 served_name: str | None = None) -> None:
        self.base_name = served_name or base
        self.model, self.tokenizer = load_model(base, dtype=dtype)
        self.base_model = self.model  # the transformers model; peft wraps it in place, never copies it
        self.lock = threading.RLock()
        self.slots: dict[str, str] = {}
        self.peft_type: str | None = None
        for name, path in (adapters or {}).items():
            self.add(name, path)

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def add(self, name: str, adapter: str | Path) -> None:
        """Load an adapter (registry name or folder) next to the others under `name`."""
        from peft import PeftModel

        if name == self.base_name or name in self.slots:
            raise InstructuneError(f"adapter name '{name}' is already taken (by the base or another adapter); "
                                   "give each adapter its own name (NAME=PATH).")
        folder = resolve_adapter(adapter)
        check_base(folder, self.base_model.config, self.base_name)
        peft_type = json.loads((folder / "adapter_config.json").read_text()).get("peft_type")
        if self.peft_type and peft_type != self.peft_type:
            raise InstructuneError(
                f"adapter '{name}' is {peft_type} but the adapters already loaded are {self.peft_type}; one model "
                f"serves one adapter type: run a second server for the {peft_type} adapters, or merge one "
                "(`instructune adapters merge`).")
        slot = f"adapter_{len(self.slots)}"
        with self.lock:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=slot)
            else:
                self.model = PeftModel.from_pretrained(self.base_model, str(folder), adapter_name=slot)
            self.model.eval()
        self.slots[name], self.peft_type = slot, peft_type

    @contextmanager
    def use(self, adapter: str | None) -> Iterator[Any]:
        """Hold the model with `adapter` active (None: the base alone) for the duration of the block."""
        if adapter is not None and adapter not in self.slots:
            raise InstructuneError(f"unknown adapter '{adapter}'; loaded: {', '.join(self.slots) or 'none'}.")
        with self.lock:
            if not self.slots:
                yield self.model
            elif adapter is None:
                with self.model.disable_adapter():
                    yield self.model
            else:
                self.model.set_adapter(self.slots[adapter], inference_mode=True)  # no grads switched on
                yield self.model

    def generate(self, texts: list[str], adapter: str | None = None, **kwargs: Any) -> list[str]:
        """`evaluation.generate.generate` with `adapter` active; kwargs pass through (max_new_tokens, ...)."""
        from instructune.evaluation.generate import generate

        with self.use(adapter) as model:
            return generate(model, self.tokenizer, texts, **kwargs)

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
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        tok, model = aset.tokenizer, aset.base_model
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
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

    def _watch(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
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


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str = "float32",
                  overwrite: bool = False) -> dict[str, Any]:
    """Write base + adapter as one full model folder (safetensors + tokenizer) that plain transformers loads.

    The merged logits are checked against the unmerged adapter's on a probe sequence before
    anything is written; the folder appears by rename, whole or not at all.
    """
    import torch
    from peft import PeftModel

    folder = resolve_adapter(adapter)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InstructuneError(f"{out} already exists and is not empty; pick a new --out folder or pass --force.")
    base = base or adapter_base(folder)[0]
    if not base:
        raise InstructuneError(f"{folder}/adapter_config.json names no base model; pass --base MODEL.")
    model, tok = load_model(base, dtype=dtype)
    check_base(folder, model.config, base)
    tied = _untie(model)
    peft_model = PeftModel.from_pretrained(model, str(folder)).eval()
    probe = torch.arange(3, 3 + min(32, model.config.vocab_size - 3)).unsqueeze(0)  # (1, T), ids past the specials
    with torch.no_grad():
        before = peft_model(probe).logits
        merged = peft_model.merge_and_unload()
        if tied and torch.equal(merged.get_output_embeddings().weight, merged.get_input_embeddings().weight):
            _retie(merged)  # the adapter left the pair alone: keep the compact, tied layout
        diff = float((merged(probe).logits - before).abs().max())
    tol = 1e-3 if dtype == "float32" else 1e-1
    if diff > tol:
        raise InstructuneError(f"merging {folder} changes the logits by {diff:.2e} (more than {tol:g}), so this "
                               "adapter cannot be merged exactly; serve it unmerged (`instructune serve --adapters`).")
    staging = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:8]}")
    try:
        merged.save_pretrained(staging)
        tok.save_pretrained(staging)
        info = {"adapter": str(adapter), "base": base, "method": describe(folder)["method"],
                "tied_embeddings": bool(merged.config.tie_word_embeddings), "max_logit_diff": diff}
        (staging / "instructune-merge.json").write_text(json.dumps(info, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**info, "path": str(out)}


def _untie(model: Any) -> bool:
    """Give lm_head its own copy of a tied embedding matrix; True if the pair was tied.

    peft applies an lm_head delta on the output path only; merged into a shared matrix it
    would leak into the input embeddings as well.
    """
    import torch

    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is None or in_emb is None or out_emb.weight.data_ptr() != in_emb.weight.data_ptr():
        return False
    out_emb.weight = torch.nn.Parameter(in_emb.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    return True


def _retie(model: Any) -> None:
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.config.tie_word_embeddings = True


def random_lora(base: str | Path, out: str | Path, seed: int = 0, targets: tuple[str, ...] = ("q_proj", "v_proj"),
                r: int = 4, scale: float = 0.5) -> Path:
    """A LoRA adapter with random nonzero B, so its effect shows at once: for tests, benchmarks, smoke runs.

    A zero-initialised B (peft's default) would make every adapter equal the base.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(str(base))
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(out))
    return Path(out)
