from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructune.adapters.merge import random_lora
from instructune.adapters.registry import adapters_root, get_adapter, register_adapter
from instructune.cli import main
from instructune.errors import InstructuneError
from instructune.testing import save_tiny, tiny_model, tiny_tokenizer


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter", seed=1,
                       targets=("o_proj", "down_proj"))


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base with 3 layers instead of 2: a different architecture fingerprint."""
    folder = tmp_path_factory.mktemp("tiny-3-layers")
    tok = tiny_tokenizer()
    tiny_model(len(tok), layers=3).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_add_list_show_remove(lora_dir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["adapters", "add", "senti.v1", str(lora_dir), "--task", "sentiment"], capsys)
    assert code == 0 and "registered 'senti.v1' (LORA" in out

    code, out, _ = cli(["adapters", "list", "--json"], capsys)
    [rec] = json.loads(out)
    expected_params = sum(t.numel() for t in load_file(lora_dir / "adapter_model.safetensors").values())
    # o_proj (64->64) and down_proj (128->64) at r=4, two layers: 2 * (4*(64+64) + 4*(128+64))
    assert rec["trainable_params"] == expected_params == 2560
    assert rec["method"] == "LORA" and rec["task"] == "sentiment" and rec["base"] == str(tiny_model_dir)
    assert rec["base_fingerprint"] == "llama, 2 layers, hidden 64, vocab 499"
    assert rec["size_bytes"] == sum(p.stat().st_size for p in lora_dir.iterdir())

    code, out, _ = cli(["adapters", "list"], capsys)
    assert code == 0 and "senti.v1" in out and "2,560" in out and "sentiment" in out

    code, out, _ = cli(["adapters", "show", "senti.v1"], capsys)
    folder = Path(json.loads(out)["path"])
    assert folder == adapters_root() / "senti.v1"
    assert (folder / "adapter_model.safetensors").read_bytes() == (lora_dir / "adapter_model.safetensors").read_bytes()
    assert not list(adapters_root().glob(".*")), "no temporary folder is left behind"

    assert cli(["adapters", "remove", "senti.v1"], capsys)[0] == 0
    assert not folder.exists()
    code, _, err = cli(["adapters", "show", "senti.v1"], capsys)
    assert code == 2 and "no adapter named 'senti.v1'" in err


def test_registry_copy_is_a_plain_peft_folder(lora_dir: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = register_adapter("plain", lora_dir)
    ids = torch.tensor([[5, 17, 42, 99]])
    logits = []
    for path in (lora_dir, folder):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(path))
        with torch.no_grad():
            logits.append(model(ids).logits)
    assert torch.equal(logits[0], logits[1])


def test_metrics_from_training_run_are_listed(lora_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(lora_dir, run / "adapter")
    (run / "metrics.json").write_text(json.dumps({"method": "lora", "task": "topics",
                                                  "test": {"accuracy": 0.8125, "macro_f1": 0.5}}))
    code, out, _ = cli(["adapters", "add", "from-run", str(run)], capsys)  # the run folder: adapter/ is found
    assert code == 0
    rec = get_adapter("from-run")
    assert rec["task"] == "topics" and rec["metrics"] == {"accuracy": 0.8125, "macro_f1": 0.5}
    assert json.loads((Path(rec["path"]) / "metrics.json").read_text())["test"]["accuracy"] == 0.8125
    code, out, _ = cli(["adapters", "list"], capsys)
    assert "accuracy=0.812" in out and "topics" in out


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x..y", "a" * 65, "sp ace", "name\n", "/abs"])
def test_bad_names_are_refused(name: str, lora_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["adapters", "add", name, str(lora_dir)], capsys)
    assert code == 2 and "invalid adapter name" in err and "Traceback" not in err
    assert not adapters_root().exists() or not any(adapters_root().iterdir())
    assert not (adapters_root().parent / "evil").exists()


def test_existing_name_needs_force(lora_dir: Path, tiny_model_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    other = random_lora(tiny_model_dir, tmp_path / "other", seed=2, targets=("q_proj",))
    assert cli(["adapters", "add", "x", str(lora_dir)], capsys)[0] == 0
    code, _, err = cli(["adapters", "add", "x", str(other)], capsys)
    assert code == 2 and "already registered" in err and "--force" in err
    assert get_adapter("x")["trainable_params"] == 2560
    assert cli(["adapters", "add", "x", str(other), "--force"], capsys)[0] == 0
    assert get_adapter("x")["trainable_params"] == 2 * 4 * (64 + 64)  # q_proj only
    assert [p.name for p in adapters_root().iterdir()] == ["x"]


def test_base_mismatch_names_both_bases(lora_dir: Path, tiny_model_dir: Path, wide_model_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["adapters", "add", "m", str(lora_dir), "--base", str(wide_model_dir)], capsys)
    assert code == 2
    assert str(tiny_model_dir) in err and "2 layers" in err
    assert str(wide_model_dir) in err and "3 layers" in err
    assert not (adapters_root() / "m").exists()
    assert cli(["adapters", "add", "m", str(lora_dir), "--base", str(tiny_model_dir)], capsys)[0] == 0


def test_interrupted_copy_registers_nothing(lora_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_copy(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        shutil.copyfile(src, dst)

    monkeypatch.setattr(shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        register_adapter("half", lora_dir)
    assert len(calls) == 2
    assert list(adapters_root().iterdir()) == []  # neither the entry nor its temporary folder
    with pytest.raises(InstructuneError, match="no adapter named 'half'"):
        get_adapter("half")


def test_not_an_adapter_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["adapters", "add", "y", str(save_tiny(tmp_path / "model"))], capsys)
    assert code == 2 and "is not a peft adapter folder (no adapter_config.json" in err
