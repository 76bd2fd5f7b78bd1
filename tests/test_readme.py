"""The README's Python example, run as written (on the real default model, in a scratch folder)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.real_model
def test_the_readme_python_example_runs(real_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {})  # noqa: S102 (our own README)
    out = capsys.readouterr().out.splitlines()
    accuracy, precision = next(line.split() for line in out if len(line.split()) == 2
                               and line.split()[1] in ("fp32", "bf16"))
    assert 0 <= float(accuracy) <= 1
    assert out[-2].startswith("smollm2-135m-instruct ") and out[-1].startswith("smollm2-135m-instruct + ")
    assert (tmp_path / "runs" / "api-example" / "adapter" / "adapter_config.json").exists()
