"""The adapter registry: trained peft adapters kept by name, each with a record of what it is.

`$INSTRUCTUNE_HOME/adapters/<NAME>/` holds a copy of the adapter files (`adapter_config.json`,
`adapter_model.safetensors`), the run's `metrics.json` when there was one, and
`instructune-adapter.json`, a small record (base, method, parameter count, size, task, scores).
The folder stays a plain peft adapter folder: `PeftModel.from_pretrained` loads it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from safetensors import safe_open

from instructune import hub
from instructune.errors import InstructuneError
from instructune.models import MODEL_PACKS, pack_dir, resolve_model
from instructune.types import JSON

if TYPE_CHECKING:  # annotations only
    from transformers import PretrainedConfig

RECORD = "instructune-adapter.json"
WEIGHTS = "adapter_model.safetensors"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # always fullmatch: `$` would let a "\n" through


def adapters_root() -> Path:
    return hub.cache_root() / "adapters"


def _lock_path() -> str:
    """The registry's lock file, beside the registry folder (whose entries are all adapters)."""
    return str(hub.cache_root() / "adapters.lock")


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


def fingerprint(config: PretrainedConfig) -> str:
    """A model's architecture in one line: type, layers, hidden size, vocabulary."""
    return (f"{config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"vocab {config.vocab_size}")


def fingerprint_of(base: str | None) -> str | None:
    """`fingerprint` of a local base folder; None when it cannot be read here."""
    if not base:
        return None
    cfg = Path(base) / "config.json"
    if not cfg.exists():
        return None
    from transformers import AutoConfig  # deferred: training configs import this module for NAME_RE alone

    return fingerprint(AutoConfig.from_pretrained(str(cfg.parent)))


def basefingerprint(base: str | None) -> str | None:
    """`fingerprint` of a base named by pack name or folder; None when it cannot be read here."""
    if base in MODEL_PACKS:
        base = str(pack_dir(base))
    return fingerprint_of(base)


def read_metrics(folder: Path) -> JSON:
    """A training run's metrics.json, in the adapter folder or next to it; {} when there is none."""
    for path in (folder / "metrics.json", folder.parent / "metrics.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise InstructuneError(f"{path} line {e.lineno}: not valid JSON ({e.msg}); fix or delete it.") from None
            return data if isinstance(data, dict) else {}
    return {}


def describe(folder: Path) -> JSON:
    """What an adapter folder holds: base, method, parameter count and size, read from its files."""
    config = read_adapter_config(folder)
    try:
        with safe_open(str(folder / WEIGHTS), framework="pt") as f:  # reads the header only, not the tensors
            params = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    except Exception as e:  # safetensors' own error types: a pickle, garbage, a truncated file
        raise InstructuneError(f"{folder / WEIGHTS} is not a readable safetensors file ({str(e)[:160]}); save the "
                               "adapter again with peft's save_pretrained (safetensors, the default).") from None
    base = config.get("base_model_name_or_path") or ""
    return {"base": _pack_name(base) if base else "", "base_fingerprint": basefingerprint(base),
            "method": config.get("peft_type", "?"), "trainable_params": params,
            "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
            "config": {k: config[k] for k in ("r", "lora_alpha", "target_modules", "task_type") if k in config}}


def read_adapter_config(folder: Path) -> JSON:
    """An adapter's adapter_config.json, which must be a JSON object."""
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InstructuneError(f"{path} is not valid JSON ({str(e)[:160]}); save the adapter again with peft's "
                               "save_pretrained.") from None
    if not isinstance(config, dict):
        raise InstructuneError(f"{path} holds a JSON {type(config).__name__}, not the object peft writes; save the "
                               "adapter again with peft's save_pretrained.")
    return config


def _check_links(source: Path) -> None:
    """Refuse a file in the adapter folder that links outside it (`secret.txt -> /etc/shadow`)."""
    inside = source.resolve()
    for item in source.iterdir():
        if item.is_symlink() and inside not in item.resolve().parents:
            raise InstructuneError(f"{item} links to {item.resolve()}, outside the adapter folder; an adapter is "
                                   "copied as it is, so remove the link (or replace it with the file itself).")


def register_adapter(name: str, path: str | Path, task: str | None = None, base: str | None = None,
                     overwrite: bool = False) -> Path:
    """Copy an adapter into the registry as `name`; returns its registry folder.

    `base` (a pack name or folder) is checked against the base the adapter was trained on, by
    architecture fingerprint, and recorded. The copy is written to a temporary folder and
    renamed, so a registry entry appears whole or not at all.
    """
    validate_name(name)
    source = find_adapter_dir(path)
    _check_links(source)
    info = describe(source)
    if base is not None:
        given = fingerprint_of(resolve_model(base))
        if info["base_fingerprint"] and given and given != info["base_fingerprint"]:
            raise InstructuneError(
                f"adapter {source} was trained on base {info['base']} ({info['base_fingerprint']}), but --base {base} "
                f"is {given}; register it with --base {info['base']}, or pick the adapter trained on {base}.")
        info["base"], info["base_fingerprint"] = base, given or info["base_fingerprint"]
    metrics = read_metrics(source)
    root = adapters_root()
    final = root / name
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(_lock_path()):  # two adds of one name: one wins, the other is told
        if (final.exists() or final.is_symlink()) and not overwrite:
            raise InstructuneError(f"adapter '{name}' is already registered ({final}); remove it first with "
                                   f"`instructune adapters remove {name}`, pass --force to replace it, or pick another "
                                   "name.")
        _copy_in(source, final, name, info, metrics, task)
    return final


def _copy_in(source: Path, final: Path, name: str, info: JSON, metrics: JSON,
             task: str | None) -> None:
    """Copy the adapter's files into a temporary folder and rename it into place, whole or not at all."""
    tmp = final.parent / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for item in source.iterdir():
            if item.is_file() and item.name != RECORD:
                shutil.copy2(item, tmp / item.name)
        if metrics and not (tmp / "metrics.json").exists():
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        record = {"name": name, **info, "task": task or ", ".join(metrics.get("tasks") or []) or metrics.get("task"), "metrics": metrics.get("test") or {},
                  "source": str(source.resolve()), "registered": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an old `final` is moved aside first and deleted after."""
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    if final.is_symlink():
        final.unlink()
    elif final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def list_adapters() -> list[JSON]:
    """Every registry record, by name (folders left by an interrupted copy start with '.' and are skipped)."""
    root = adapters_root()
    if not root.exists():
        return []
    return [get_adapter(p.name) for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.is_dir()]


def get_adapter(name: str) -> JSON:
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
    with FileLock(_lock_path()):
        if folder.is_symlink():  # the entry is a link: remove the link, never what it points to
            folder.unlink()
            return
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


def check_base(folder: Path, model_config: PretrainedConfig, model_name: str) -> None:
    """Refuse an adapter made for a different base architecture, naming the base each side expects."""
    base, expected = adapter_base(folder)
    have = fingerprint(model_config)
    if expected and expected != have:
        raise InstructuneError(f"adapter {folder} was trained on base {base} ({expected}), but the model is "
                               f"{model_name} ({have}); use --model {base}, or an adapter trained on {model_name}.")
