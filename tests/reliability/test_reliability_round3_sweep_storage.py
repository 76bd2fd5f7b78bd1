"""Round three, defects 7 and 8: the sweep's storage. A database password never appears in a message (the
storage error once echoed it); and processes opening one fresh SQLite study at once all succeed (a resumed
sweep once failed with `UNIQUE constraint failed: alembic_version.version_num`: two processes created
Optuna's tables in one file at the same time)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages._rdb import storage as rdb  # the test crowds Optuna's own schema step, nothing else

from instructune.cli import main
from instructune.errors import InstructuneError
from instructune.search import space
from instructune.search.study import STUDY, open_study, storage

PASSWORD = "hunter2-s3cret"


@pytest.mark.parametrize(("text", "shown"), [
    (f"postgresql://user:{PASSWORD}@db.example:5432/sweeps", "postgresql://user:***@db.example:5432/sweeps"),
    (f"mysql+pymysql://me:{PASSWORD}@h/db?charset=utf8", "mysql+pymysql://me:***@h/db?charset=utf8"),
    (f"postgresql://me:p@ss:{PASSWORD}@h/db", "postgresql://me:***@h/db"),  # an unescaped @ and : in it
    (f"redis://:{PASSWORD}@h:6379", "redis://:***@h:6379"),
    (f"(from 'postgresql://a:{PASSWORD}@h/x' -> 'postgresql://a:x@h/x')",
     "(from 'postgresql://a:***@h/x' -> 'postgresql://a:***@h/x')"),
    (f"host=h user=me password={PASSWORD} dbname=x", "host=h user=me password=*** dbname=x"),
    ("postgresql://nobody@127.0.0.1:1/none", "postgresql://nobody@127.0.0.1:1/none"),  # no password: as it is
    ("sqlite:////tmp/sweep/study.db", "sqlite:////tmp/sweep/study.db"),
])
def test_redact_hides_every_password(text: str, shown: str) -> None:
    from instructune.search.study import redact

    assert redact(text) == shown


def sweep_file(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"model": str(model), "output_dir": str(tmp_path / "sweep"),
                                    "sweep": {"params": {"optim.lr": [1e-3]}, "trials": 1}}))
    return path


@pytest.mark.parametrize("url", [f"postgresql://user:{PASSWORD}@127.0.0.1:1/none",  # nothing listens there
                                 f"postgresql://user:{PASSWORD}@127.0.0.1:notaport/none"])  # does not parse
def test_the_storage_error_names_the_url_without_its_password(url: str, tmp_path: Path, tiny_model_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(sweep_file(tmp_path, tiny_model_dir)), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "cannot be opened" in err and "postgresql://user:***@127.0.0.1:" in err, err
    assert PASSWORD not in err and "Traceback" not in err


def test_a_config_difference_in_the_storage_url_hides_both_passwords(tmp_path: Path) -> None:
    params, _ = space.parse({"optim.lr": [1e-3]})

    def key(password: str) -> dict:
        return {"train": {}, "sweep": {"storage": f"postgresql://me:{password}@h/db"}}

    open_study(storage(None, tmp_path), ["minimize"], params, 0, "none", key("first-" + PASSWORD), False)
    with pytest.raises(InstructuneError, match="created by another config") as e:
        open_study(storage(None, tmp_path), ["minimize"], params, 0, "none", key("second-" + PASSWORD), True)
    assert "postgresql://me:***@h/db" in str(e.value) and PASSWORD not in str(e.value)


def test_openers_racing_on_a_fresh_sqlite_study_all_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six openers start at one instant (a resumed sweep, its workers, a reader). Each that has created the
    tables waits (up to 3 s) at Optuna's version rows for the others, so without a lock all of them insert
    those rows at once, as two processes under load did."""
    openers = 6
    crowd, start = threading.Barrier(openers), threading.Barrier(openers)
    versions = rdb._VersionManager.__init__

    def crowded(self: object, *args: object) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # the others are held back (by the lock): go on
            crowd.wait(timeout=3)
        versions(self, *args)

    monkeypatch.setattr(rdb._VersionManager, "__init__", crowded)
    errors: list[BaseException] = []

    def open_study_storage() -> None:
        start.wait()
        try:
            storage(None, tmp_path)
        except BaseException as e:  # noqa: BLE001 (any failure fails the test below, with its message)
            errors.append(e)

    threads = [threading.Thread(target=open_study_storage) for _ in range(openers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    study = optuna.create_study(storage=storage(None, tmp_path), study_name=STUDY)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2 and (tmp_path / "study.db.lock").exists()
