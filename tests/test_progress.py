"""Progress outside a terminal: a status line when nothing was printed for STATUS_EVERY seconds."""

from __future__ import annotations

import re
import time

import pytest

from instructune import progress


def test_a_status_line_comes_only_after_a_silence(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress, "STATUS_EVERY", 3600.0)
    progress.say("step 1")
    with progress.Progress(3, "score") as bar:
        bar.update(3)
    assert capsys.readouterr() == ("step 1\n", "")  # quick work, just after a line: nothing to add
    monkeypatch.setattr(progress, "STATUS_EVERY", 0.0)
    with progress.Progress(3, "score") as bar:
        bar.update(1)
        bar.update(2)
    assert capsys.readouterr().err.splitlines() == ["score: 1/3 examples, 0 s", "score: 3/3 examples, 0 s"]


def test_a_batch_longer_than_the_silence_gets_a_line_while_it_runs(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress, "STATUS_EVERY", 1.0)
    progress.say("loading")
    with progress.Progress(2, "generate"):
        time.sleep(3.0)  # one long batch: nothing calls update, the watcher speaks
    assert re.fullmatch(r"generate: 0/2 examples, [12] s", capsys.readouterr().err.splitlines()[0])
