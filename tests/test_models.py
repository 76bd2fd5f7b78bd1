from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from instructune.cli import main
from instructune.models import MODEL_PACKS, load_model, pack_dir, resolve_model, write_manifest


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_models_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0
    for name in MODEL_PACKS:
        assert name[:12] in out


@pytest.mark.parametrize("name, expected", [
    ("no-such-model", "unknown model 'no-such-model'"),
    ("./missing-folder", "does not exist"),
    ("someorg/somemodel", "model hub is unreachable"),
    ("smollm2-135m-instruct", "not pulled yet; run `instructune models pull smollm2-135m-instruct`"),
])
def test_model_errors_exit_2_without_traceback(name: str, expected: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["generate", "--model", name, "hi"], capsys)
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one paragraph


def test_corrupted_cache_is_detected(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = pack_dir("smollm2-135m-instruct")
    shutil.copytree(tiny_model_dir, folder)
    write_manifest(folder, "smollm2-135m-instruct")
    assert resolve_model("smollm2-135m-instruct") == str(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, _, err = run_cli(["generate", "--model", "smollm2-135m-instruct", "hi"], capsys)
    assert code == 2
    assert "is corrupted" in err and "models pull smollm2-135m-instruct --force" in err


def test_generate_from_local_folder(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["generate", "--model", str(tiny_model_dir), "--max-new-tokens", "5", "hello"], capsys)
    assert code == 0
    # greedy decoding is deterministic: a second call prints the same completion
    assert run_cli(["generate", "--model", str(tiny_model_dir), "--max-new-tokens", "5", "hello"], capsys)[1] == out


def test_generate_rejects_bad_options(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["generate", "--model", str(tiny_model_dir), "--top-p", "0", "--temperature", "-1", "x"],
                           capsys)
    assert code == 2 and "--top-p" in err and "--temperature" in err


def test_folder_without_config(tmp_path: Path) -> None:
    from instructune.errors import InstructuneError
    with pytest.raises(InstructuneError, match="has no config.json"):
        load_model(str(tmp_path))


@pytest.mark.real_model
def test_real_model_says_positive(real_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    prompt = ("Classify the sentiment of this review as positive or negative: "
              "I loved this vacuum, it works great.")
    code, out, _ = run_cli(["generate", "--model", real_model, "--max-new-tokens", "24", prompt], capsys)
    assert code == 0 and "positive" in out.lower()


@pytest.mark.real_model
def test_real_model_corrupted_then_force_pull(real_model: str, real_home: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    shutil.copytree(real_home / "models" / real_model, home / "models" / real_model)
    (home / "gguf").mkdir(parents=True)
    gguf = MODEL_PACKS[real_model].gguf_name
    (home / "gguf" / gguf).symlink_to(real_home / "gguf" / gguf)
    monkeypatch.setenv("INSTRUCTUNE_HOME", str(home))
    cfg = home / "models" / real_model / "config.json"
    cfg.write_text(cfg.read_text().replace("silu", "gelu"))
    code, _, err = run_cli(["generate", "--model", real_model, "hi"], capsys)
    assert code == 2 and "corrupted" in err
    assert run_cli(["models", "pull", real_model, "--force"], capsys)[0] == 0
    assert "silu" in cfg.read_text()
    assert run_cli(["generate", "--model", real_model, "--max-new-tokens", "3", "hi"], capsys)[0] == 0
