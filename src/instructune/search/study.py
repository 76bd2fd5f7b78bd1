"""The Optuna study behind a sweep: stored in SQLite in the sweep folder (or any database Optuna
supports), so a killed sweep resumes and workers on one machine or many share it.

Trials whose process died are noticed by Optuna's heartbeat, marked failed and retried once
(`RetryFailedTrialCallback`). The sweep's config is kept with the study: a study is only ever
continued by the config that created it.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import GridSampler, TPESampler
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from sqlalchemy.engine import make_url

from instructune.errors import InstructuneError
from instructune.search.space import Param, current, grid_only
from instructune.training.run_dir import differences
from instructune.types import JSON

# Heartbeats and study groups are marked experimental by Optuna; their notices say nothing the user can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDY = "instructune-sweep"
HEARTBEAT_S = 10
"""A running trial writes a heartbeat this often; one silent for twice as long is marked failed and retried."""
SCHEMA_LOCK_S = 120
"""The longest a process waits for another to finish creating a SQLite study's tables (a second or less)."""


def storage(url: str | None, out: Path, heartbeat_s: int = HEARTBEAT_S) -> RDBStorage:
    """The study's storage: `url`, or SQLite in the sweep folder. Opening creates the tables of a new
    database; for a SQLite file that is done under a file lock, so processes opening one fresh file at
    once (workers, a resumed sweep, a reader) do not both create them (`alembic_version` is unique)."""
    url = url or f"sqlite:///{(out / 'study.db').resolve()}"
    try:
        with schema_lock(url):
            return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                              heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=1))
    except Exception as e:  # sqlalchemy's errors: a bad URL, a database that cannot be reached
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InstructuneError(f"the sweep storage {redact(url)} cannot be opened ({redact(reason)}); check the URL "
                               "and that the database is reachable, or leave --storage out for SQLite in the sweep "
                               "folder.") from None


def schema_lock(url: str) -> contextlib.AbstractContextManager:
    """A file lock beside a SQLite database file (`study.db.lock`); no lock for other databases (their
    workers start after the sweep's first process has created the study) or an in-memory SQLite."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return contextlib.nullcontext()
    return FileLock(f"{database}.lock", timeout=SCHEMA_LOCK_S)


_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):\S*@")
_PASSWORD_FIELD = re.compile(r"(?P<head>\bpassword\s*=\s*)[^\s&;]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced: `postgresql://user:***@host/db` (and libpq's
    `password=...`), so an error message or a log line never shows a database password."""
    return _PASSWORD_FIELD.sub(r"\g<head>***", _CREDENTIALS.sub(r"\g<head>:***@", text))


def sampler(params: list[Param], seed: int) -> optuna.samplers.BaseSampler:
    """A grid over list-only spaces (every combination once), else TPE."""
    if grid_only(params):
        return GridSampler({p.path: list(p.choices) for p in params}, seed=seed)
    return TPESampler(seed=seed, multivariate=True, group=True)


def pruner(name: str) -> optuna.pruners.BasePruner:
    return {"none": NopPruner, "median": lambda: MedianPruner(n_startup_trials=2, n_warmup_steps=0),
            "hyperband": HyperbandPruner}[name]()


def open_study(store: RDBStorage, directions: list[str], params: list[Param], seed: int, prune: str,
               key: JSON, resume: bool) -> optuna.Study:
    """Create the study, or continue it with --resume: refused when it was created by another config."""
    existing = [s.study_name for s in optuna.study.get_all_study_summaries(store)]
    if STUDY in existing and not resume:
        raise InstructuneError("this sweep folder already holds a study; continue it with --resume, or choose "
                               "another sweep output_dir.")
    study = optuna.create_study(storage=store, study_name=STUDY, directions=directions, load_if_exists=True,
                                sampler=sampler(params, seed), pruner=pruner(prune) if len(directions) == 1 else None)
    saved = study.user_attrs.get("config")
    if saved is None:
        study.set_user_attr("config", json.loads(json.dumps(key)))
        first = current(params, key["train"])
        if first and not grid_only(params):  # a grid tries every point anyway
            study.enqueue_trial(first)
    elif saved != json.loads(json.dumps(key)):
        diff = sorted(differences(saved, json.loads(json.dumps(key))))
        raise InstructuneError(f"the study in this folder was created by another config ({redact(', '.join(diff))} "
                               "differ); "
                               "resume it with the config that created it, or choose another sweep output_dir.")
    return study


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed and pruned trials: what counts against `trials`."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False) if t.state in states]


def pareto(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The non-dominated completed trials (every trial that is best on some trade-off)."""
    return list(study.best_trials)
