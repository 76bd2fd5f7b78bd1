"""Reliability, round three: signals and concurrency around the commands that write folders and caches.

- SIGTERM during `data build` (into --out, and into the dataset cache) and during `adapters merge`,
  at seeded random moments and the moment the write begins: the output folder is absent, or whole and
  byte for byte the uninterrupted run's, never half-written.
- Two sweep workers on one SQLite study, the one that writes the results SIGKILLed mid-trial: the
  other finishes the trials, and `--resume` writes best.yaml without running more than `trials`.
- Two trainings started at once on an empty probe cache: one measures, the other waits on the lock
  and reads its result; both succeed and hardware.json is one valid JSON entry.

Commands run as forks of a warm interpreter that has imported torch and transformers (as
test_reliability_crash.py does), so each interrupted run costs a fraction of a second, not ~6 s.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from instructune.adapters.merge import random_lora
from instructune.cli import main
from instructune.data.build import dataset_templates, read_split
from instructune.hardware import CACHE_FILE
from instructune.search.study import storage

# Forks `python -m instructune ARGV` per line of stdin ({"argv", "log", "env"}); prints the child's pid, then its
# exit code (negative: killed by that signal). SIGTERM keeps Python's default disposition: the process ends there.
ZYGOTE = r'''
import json, os, runpy, sys, traceback
import torch, transformers, peft, safetensors.torch  # noqa: F401
import instructune.cli, instructune.adapters.merge, instructune.data.build  # noqa: F401

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(job["env"])
        sys.argv = ["instructune", *job["argv"]]
        code = 0
        try:
            runpy.run_module("instructune", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
'''


class Zygote:
    """`instructune ARGV` as forks of one warm interpreter; the test may signal each child while it runs."""

    def __init__(self, logs: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout], daemon=True).start()
        self.logs, self.count = logs, 0

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Fork a child running ARGV (in this test's INSTRUCTUNE_HOME unless `env` says otherwise); its pid."""
        self.count += 1
        env = {"INSTRUCTUNE_HOME": os.environ["INSTRUCTUNE_HOME"], **(env or {})}
        job = {"argv": argv, "log": str(self.logs / f"job{self.count}.log"), "env": env}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return int(self.lines.get(timeout=120))

    def running(self) -> bool:
        return self.lines.empty()

    def wait(self) -> int:
        return int(self.lines.get(timeout=120))

    def log(self) -> str:
        return (self.logs / f"job{self.count}.log").read_text()[-2000:]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """One warm interpreter for every signal test here (its start costs ~6 s, ~20 s on a busy machine)."""
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def timed(zygote: Zygote, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, float]:
    """Run ARGV to its end: its exit code and wall time (from the fork)."""
    zygote.start(argv, env)
    start = time.monotonic()
    return zygote.wait(), time.monotonic() - start


def interrupted(zygote: Zygote, argv: list[str], trigger: float | Callable[[], bool],
                env: dict[str, str] | None = None) -> bool:
    """Run ARGV and SIGTERM it after `trigger` seconds, or as soon as `trigger()` holds (polled each 0.2 ms).
    Returns whether the signal ended it (False: it had finished first, with exit code 0)."""
    pid, sent = zygote.start(argv, env), False
    if callable(trigger):
        end = time.monotonic() + 60
        while zygote.running() and not trigger() and time.monotonic() < end:
            time.sleep(0.0002)
    else:
        time.sleep(trigger)
    if zygote.running():
        try:
            os.kill(pid, signal.SIGTERM)
            sent = True
        except ProcessLookupError:  # it ended between the check and the signal
            pass
    code = zygote.wait()
    assert code in (0, -signal.SIGTERM), zygote.log()
    return sent and code != 0


def same_files(out: Path, reference: Path) -> None:
    """`out` holds exactly the reference's files, byte for byte: nothing missing, torn or left over."""
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in reference.iterdir()), f"{out} is half-written: {names}"
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{out / name} differs"


TRIGGERS = ("at random", "as the write begins", "as the output appears")


def sigterm_attack(zygote: Zygote, job: Callable[[int], tuple[list[str], dict[str, str]]],
                   writing: Callable[[int], bool], output: Callable[[int], Path | None],
                   staged: Callable[[int], list[Path]], seed: int) -> list[str]:
    """Run job 0 to its end (the reference output), then jobs 1-9, each sent SIGTERM: at a seeded random moment
    of job 0's duration, the moment `writing(i)` sees its write begin, or the moment its output appears.
    Each output is absent or the reference's, byte for byte. Returns what each job left, for the report."""
    code, took = timed(zygote, *job(0))
    assert code == 0, zygote.log()
    reference = output(0)
    assert reference is not None, "the uninterrupted job left no output"
    rng = random.Random(seed)
    outcomes = []
    for i in range(1, 10):
        kind = TRIGGERS[(i - 1) % 3]
        trigger = {"at random": rng.uniform(0, took), "as the write begins": lambda i=i: writing(i),
                   "as the output appears": lambda i=i: output(i) is not None}[kind]
        argv, env = job(i)
        killed = interrupted(zygote, argv, trigger, env)
        out = output(i)
        if out is None:
            assert killed, zygote.log()  # a run that finished left its output
        else:
            same_files(out, reference)
        outcomes.append(f"{'killed' if killed else 'finished'} {kind} -> {'whole' if out else 'absent'}, "
                        f"{len(staged(i))} staging folder(s) left")
    print(f"job took {took:.2f} s;", "; ".join(outcomes))
    assert any(o.startswith("killed as the write begins -> absent") for o in outcomes), outcomes  # cut mid-write
    return outcomes


# --- SIGTERM during `data build` ------------------------------------------------------------------------

TEMPLATES = """
templates:
  - id: mood
    task: classification
    choices: {pos: positive, neg: negative}
    prompt: "Review: {{ text }}\\nPositive or negative?"
  - id: title
    task: summarization
    prompt: "Give a title: {{ text }}"
    completion: "{{ title }}"
"""


def rows_file(folder: Path, n: int = 1500) -> tuple[Path, Path]:
    """Enough rows that rendering and writing take a while: a signal can land inside the write."""
    rng = random.Random(0)
    words = ["great", "fine", "good", "dull", "bad", "poor", "long", "short", "funny", "sad"]
    source = folder / "reviews.jsonl"
    source.write_text("".join(json.dumps({"text": f"a {' '.join(rng.choices(words, k=12))} film {i}",
                                          "label": "pos" if i % 2 else "neg", "title": f"film {i}"}) + "\n"
                              for i in range(n)))
    tpl = folder / "t.yaml"
    tpl.write_text(TEMPLATES)
    return source, tpl


@pytest.mark.slow
@pytest.mark.parametrize("where", ["out", "cache"])
def test_sigterm_during_data_build_leaves_the_dataset_whole_or_absent(where: str, tmp_path: Path,
                                                                      zygote: Zygote) -> None:
    """Into --out (the folder the user names), and into the dataset cache ($INSTRUCTUNE_HOME/datasets/<hash>,
    what a training run builds on first use): a fresh home each time, so every job really builds."""
    source, tpl = rows_file(tmp_path)
    homes = [tmp_path / f"home{i}" for i in range(10)]

    def job(i: int) -> tuple[list[str], dict[str, str]]:
        out = ["--out", str(tmp_path / f"out{i}")] if where == "out" else []
        return (["data", "build", "--file", str(source), "--templates-file", str(tpl), *out],
                {"INSTRUCTUNE_HOME": str(homes[i])})

    def written(i: int) -> list[Path]:
        """What job i wrote: --out and hidden `.out<i>...` folders beside it, or the cache's folders."""
        if where == "out":
            return [p for p in tmp_path.iterdir() if p.name == f"out{i}" or p.name.startswith(f".out{i}.")]
        cache = homes[i] / "datasets"
        return list(cache.iterdir()) if cache.exists() else []

    def output(i: int) -> Path | None:
        found = [p for p in written(i) if ".staging-" not in p.name]
        assert len(found) <= 1, found
        return found[0] if found else None

    sigterm_attack(zygote, job, lambda i: bool(written(i)), output,
                   lambda i: [p for p in written(i) if ".staging-" in p.name], seed=7)
    reference = output(0)  # the one every whole output equals, byte for byte, loads
    assert len(read_split(reference, "train")) > 0 and set(dataset_templates(reference)) == {"mood", "title"}


# --- SIGTERM during `adapters merge` ----------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_during_adapters_merge_leaves_the_model_whole_or_absent(tmp_path: Path, tiny_model_dir: Path,
                                                                        zygote: Zygote) -> None:
    from transformers import AutoModelForCausalLM

    adapter = random_lora(tiny_model_dir, tmp_path / "adapter", seed=3)

    def job(i: int) -> tuple[list[str], dict[str, str]]:
        return ["adapters", "merge", str(adapter), "--out", str(tmp_path / f"merged{i}")], {}

    def staged(i: int) -> list[Path]:  # merge writes into a hidden staging folder beside --out
        return [p for p in tmp_path.iterdir() if p.name.startswith(f".merged{i}.")]

    def output(i: int) -> Path | None:
        return tmp_path / f"merged{i}" if (tmp_path / f"merged{i}").exists() else None

    sigterm_attack(zygote, job, lambda i: bool(staged(i)), output, staged, seed=11)
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged0")  # the reference every whole output equals loads


# --- a sweep worker SIGKILLed mid-trial, then resumed -------------------------------------------------------

STUDY = "instructune-sweep"
TRIALS = 4


def sweep_config(tmp_path: Path, model: Path, toy_tasks: tuple[Path, Path, Path], trials: int) -> Path:
    """Trials of 2 LoRA steps on the toy reviews (a second or two each); results written without a final run."""
    reviews, _, tpl = toy_tasks
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(model), "output_dir": str(tmp_path / "sweep"), "batch_size": 8, "max_steps": 2,
        "eval_every": 2, "eval_mode": "likelihood", "optim": {"warmup_steps": 0},
        "data": {"source": str(reviews), "template_file": str(tpl), "templates": ["mood"], "val_limit": 8,
                 "test_limit": 8},
        "sweep": {"trials": trials, "objective": "val_loss", "pruner": "none", "final": False, "seed": 0,
                  "params": {"optim.lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "method.r": [2, 4]}}}))
    return cfg


def sweep_trials(folder: Path) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read as the sweep opens it (under its schema lock: a reader opening the file while a
    sweep creates its tables would create them too)."""
    if not (folder / "study.db").exists():
        return []
    try:
        return optuna.load_study(study_name=STUDY, storage=storage(None, folder)).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def finished(folder: Path) -> int:
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in sweep_trials(folder))


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state: ppid
                out.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def alive(pid: int) -> bool:
    """Whether `pid` still runs (an orphan that has exited may linger as a zombie until it is reaped)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_resumed_sweep_that_has_its_trials_runs_no_more(tmp_path: Path, tiny_model_dir: Path,
                                                          toy_tasks: tuple[Path, Path, Path]) -> None:
    """Optuna runs a trial before its stop callback can say the count is reached: a `--resume` of a finished
    study (or a worker joining one) ran one trial more than `sweep.trials`."""
    cfg = sweep_config(tmp_path, tiny_model_dir, toy_tasks, trials=1)
    assert main(["sweep", str(cfg)]) == 0
    assert main(["sweep", str(cfg), "--resume"]) == 0
    assert finished(tmp_path / "sweep") == 1 and (tmp_path / "sweep" / "best.yaml").exists()


@pytest.mark.slow
def test_a_sweep_worker_killed_mid_trial_then_resumed_ends_with_its_trials_and_best_yaml(
        tmp_path: Path, tiny_model_dir: Path, toy_tasks: tuple[Path, Path, Path]) -> None:
    cfg, folder = sweep_config(tmp_path, tiny_model_dir, toy_tasks, TRIALS), tmp_path / "sweep"
    # the first process writes the results; it starts the second (`--worker`) and both take trials
    log = tmp_path / "sweep.log"
    with open(log, "w") as sink:  # a file, not a pipe: the orphaned worker must never block on a full one
        first = subprocess.Popen([sys.executable, "-m", "instructune", "sweep", str(cfg), "--workers", "2"],
                                 stdout=sink, stderr=subprocess.STDOUT)
    deadline, second = time.monotonic() + 240, None
    try:
        while True:  # the first process is inside a trial, its worker started (holding a trial, or still
            # loading: then the first is killed in its second trial, before the study has its count)
            second = second or next(iter(children(first.pid)), None)
            trials = sweep_trials(folder)
            mine = [t.state.name for t in trials if t.user_attrs.get("pid") == first.pid]
            others = [t for t in trials if t.user_attrs.get("pid") not in (first.pid, None)]
            if second and "RUNNING" in mine and (others or len(mine) >= 2):
                break
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(random.Random(5).uniform(0, 0.5))  # somewhere in its training
        first.kill()
        first.wait()
        while alive(second):  # the orphaned worker goes on alone until the study has its trials
            assert time.monotonic() < deadline, "the surviving worker never finished"
            time.sleep(0.2)
    finally:
        first.kill()
        if second and alive(second):  # a failed test leaves no orphan running
            os.kill(second, signal.SIGKILL)
    cut = [t.state.name for t in sweep_trials(folder) if t.user_attrs.get("pid") == first.pid
           and t.state.name not in ("COMPLETE", "PRUNED")]
    # the killed trial is never counted: still RUNNING, or FAIL once a heartbeat check saw it stale (and a
    # WAITING copy queued for a retry)
    assert set(cut) <= {"RUNNING", "FAIL", "WAITING"} and {"RUNNING", "FAIL"} & set(cut), cut
    print("trials:", [(t.number, "first" if t.user_attrs.get("pid") == first.pid else "second", t.state.name)
                      for t in sweep_trials(folder)])
    assert finished(folder) == TRIALS and not (folder / "best.yaml").exists()

    assert main(["sweep", str(cfg), "--resume"]) == 0
    assert finished(folder) == TRIALS  # the study had its trials: resuming adds none
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["method"]["r"] in (2, 4) and 1e-4 <= best["optim"]["lr"] <= 1e-1
    report = json.loads((folder / "sweep.json").read_text())
    assert sum(t["state"] in ("complete", "pruned") for t in report["trials"]) == TRIALS


# --- two trainings at once on an empty probe cache ----------------------------------------------------------

# Both processes reach `precision: auto` at the same moment (a barrier of files); the probe's timing is
# injected (fp32 10, bf16 5 GFLOP/s, 50 ms a repetition) so that its result is clean and the one that
# measures holds the cache's lock for half a second while the other waits on it.
PROBING_TRAIN = r'''
import os, sys, time
from pathlib import Path
import instructune.commands.train, instructune.training.trainer  # noqa: F401 (imported before the barrier)
from instructune.hardware import matmul, precision

def measure(shapes, bf16=False):
    time.sleep(0.05)
    return 5.0 if bf16 else 10.0

def timed_probe(*args, **kwargs):
    start = time.monotonic()
    try:
        return real_probe(*args, **kwargs)
    finally:
        print(f"probe returned after {time.monotonic() - start:.2f} s", flush=True)

matmul.matmul_gflops = measure
matmul.background_load = lambda: (0.0, os.cpu_count() or 1)  # the two runs load each other's CPUs
real_probe, precision.probe = precision.probe, timed_probe
barrier = Path(sys.argv[1])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.001)
from instructune.cli import main
raise SystemExit(main(sys.argv[2:]))
'''


@pytest.mark.slow
def test_two_trainings_on_an_empty_probe_cache_both_succeed_and_it_stays_json(
        tmp_path: Path, tiny_model_dir: Path, toy_tasks: tuple[Path, Path, Path]) -> None:
    reviews, _, tpl = toy_tasks
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "precision": "auto", "batch_size": 8, "max_steps": 2, "eval_every": 0,
        "save_every": 0, "keep_checkpoints": 0, "eval_mode": "likelihood",
        "data": {"source": str(reviews), "template_file": str(tpl), "templates": ["mood"], "val_limit": 4,
                 "test_limit": 4}}))
    home = Path(os.environ["INSTRUCTUNE_HOME"])
    assert not (home / CACHE_FILE).exists()
    env = {k: v for k, v in os.environ.items() if k != "INSTRUCTUNE_AUTO_PRECISION"}  # the probe really runs
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", PROBING_TRAIN, str(barrier), "train", str(cfg),
                               f"output_dir={tmp_path / f'run{i}'}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-2000:]
    lines = [next(x for x in out.splitlines() if x.startswith("precision auto")) for out in outputs]
    print([(x.endswith("(cached)"), next(y for y in out.splitlines() if y.startswith("probe returned")))
           for x, out in zip(lines, outputs)])  # (read the other's result, how long it waited)
    assert all("-> fp32: bf16 matmul 5.0 GFLOP/s vs fp32 10.0" in x for x in lines), lines
    assert sorted(x.endswith("(cached)") for x in lines) == [False, True]  # one measured, one read its result
    cache = json.loads((home / CACHE_FILE).read_text())
    assert len(cache) == 1 and next(iter(cache.values()))["probe"]["fp32_gflops"] == 10.0
    assert not [p.name for p in home.iterdir() if p.suffix == ".tmp"]
    for i in range(2):
        assert json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())["precision"]["precision"] == "fp32"
