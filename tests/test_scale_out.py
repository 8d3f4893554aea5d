"""Scale-out (issue 16): several worker processes on one study in one shared storage.

Storages: a real PostgreSQL server started by the `postgres` fixture (Debian's package; the
tests skip with the reason where it cannot start), Optuna's JournalFileBackend on a local
path, and SQLite. Workers here are forked processes running `run_optuna` with a fake proxy
that sleeps (no torch import per process, so a test takes seconds); `search.py` itself runs
against PostgreSQL once, end to end, with two real workers and `show` from the storage.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_optimize import FakeProxy, FakeTable, ListSpace, variant, wobbly_accuracy

import search
from optimize.objective import CLAIM, DUPLICATE, INTERRUPTED, LOST, WORKER, Objective
from optimize.runner import StudyMismatch, create_or_join, evaluated, run_optuna
from optimize.storage import StorageError, StorageSpec, redact
from proxies import ProxyResult
from search_space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
scale_out = importlib.import_module("scale_out")
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
DIRECTIONS = ["maximize", "minimize"]
FORK = multiprocessing.get_context("fork")  # the workers never touch torch (see SlowProxy)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server for this module (started in a temp folder, stopped afterwards)."""
    try:
        with scale_out.temp_postgres() as url:
            yield url
    except scale_out.PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL server: {e}")


@pytest.fixture(params=["postgresql", "journal"])
def url(request, tmp_path) -> str:
    """Each shared storage; one PostgreSQL server serves the module, a study per test."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres")
    return f"journal:{tmp_path / 'study.log'}"


class SlowProxy(FakeProxy):
    """FakeProxy that takes `seconds` per candidate (long enough to be killed mid-trial)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(wobbly_accuracy)
        self.seconds = seconds

    def __call__(self, arch, *, callback=None) -> ProxyResult:
        time.sleep(self.seconds)
        return super().__call__(arch, callback=callback)


def _worker(url: str, name: str, n_trials: int, seconds: float, space: str, rank: int) -> None:
    """One worker: joins the study and searches until it holds `n_trials` distinct ones."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    archs = SearchSpace.from_file(ROOT / "search_space" / "default.yaml") if space == "full" else \
        ListSpace([variant(i) for i in range(int(space))])
    study = optuna.load_study(study_name=name, storage=StorageSpec(url, heartbeat_s=1).open(),
                              sampler=optuna.samplers.RandomSampler(seed=rank))
    obj = Objective(space=archs, latency={"d": FakeTable(lambda a: float(a.feature_dim))},
                    proxy=SlowProxy(seconds))
    run_optuna(study, obj, n_trials)


def start_workers(url: str, name: str, n: int, *, n_trials: int, seconds: float,
                  space: str = "full") -> list:
    create_or_join(StorageSpec(url).open(), DIRECTIONS, optuna.samplers.RandomSampler(), None, name)
    procs = [FORK.Process(target=_worker, args=(url, name, n_trials, seconds, space, k))
             for k in range(n)]
    for p in procs:
        p.start()
    return procs


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=StorageSpec(url).open())


def wait(procs: list, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} worker(s) still running after {timeout} s"


def trained_twice(trials: list) -> dict[str, int]:
    """arch_id -> evaluations beyond the first (repeats reuse their twin and are not counted)."""
    n = Counter(t.user_attrs["arch_id"] for t in trials if evaluated(t))
    return {a: k - 1 for a, k in n.items() if k > 1}


# ------------------------------------------------------------------------- cooperating
def test_workers_share_the_trial_budget(url):
    procs = start_workers(url, "share", 3, n_trials=6, seconds=0.2)
    wait(procs)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    trials = load(url, "share").trials
    counted = [t for t in trials if evaluated(t)]
    # --trials is the study's total: 6, plus at most one trial per other worker still running
    assert 6 <= len(counted) <= 8
    assert len({t.user_attrs[WORKER] for t in trials}) >= 2  # the work was shared
    assert not trained_twice(trials) and not any(t.state == TrialState.RUNNING for t in trials)


def test_a_running_twin_is_waited_for_not_trained_again(url):
    """Eight workers, a space of four architectures: most draws are twins, many of a trial
    still running or finishing at that moment; each architecture is trained once."""
    procs = start_workers(url, "twins", 8, n_trials=4, seconds=0.5, space="4")
    wait(procs)
    trials = load(url, "twins").trials
    assert [p.exitcode for p in procs] == [0] * 8
    assert sum(evaluated(t) for t in trials) == 4 and not trained_twice(trials)
    repeats = [t for t in trials if DUPLICATE in t.user_attrs]
    assert repeats and all(t.state == TrialState.COMPLETE for t in repeats)
    # a repeat that waited for its twin says so, and took the twin's values
    by_number = {t.number: t for t in trials}
    for t in repeats:
        assert t.values == by_number[t.user_attrs[DUPLICATE]].values
    assert any(t.user_attrs.get(CLAIM) == "waiting" for t in repeats)


def test_kill_9_loses_only_the_running_trial_which_is_retried(url):
    name = "kill"
    procs = start_workers(url, name, 2, n_trials=6, seconds=1.0)
    study = load(url, name)
    deadline = time.monotonic() + 60
    victim = None
    while victim is None:  # the first worker in the middle of a drawn candidate
        assert time.monotonic() < deadline, "no trial started"
        running = {t.user_attrs.get(WORKER): t for t in study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING,)) if "arch" in t.user_attrs}
        victim = running.get(f"{socket.gethostname()}:{procs[0].pid}")
        time.sleep(0.05)
    os.kill(procs[0].pid, signal.SIGKILL)
    wait(procs[1:])
    procs[0].join()
    trials = load(url, name).trials
    cut = trials[victim.number]
    assert cut.state == TrialState.FAIL and cut.user_attrs[LOST] and cut.user_attrs[INTERRUPTED]
    assert "no heartbeat for 4 s" in cut.user_attrs["fail_reason"] and not evaluated(cut)
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == victim.params and retry.state == TrialState.COMPLETE
    assert LOST not in retry.user_attrs and evaluated(retry)  # the retry starts clean
    assert sum(evaluated(t) for t in trials) >= 6 and not trained_twice(trials)
    assert not any(t.state == TrialState.RUNNING for t in trials)


def test_ctrl_c_of_one_worker_leaves_the_others_running(url):
    name = "ctrlc"
    procs = start_workers(url, name, 2, n_trials=5, seconds=0.5)
    study = load(url, name)
    deadline = time.monotonic() + 60
    while not any(t.user_attrs.get(WORKER) == f"{socket.gethostname()}:{procs[0].pid}"
                  and "arch" in t.user_attrs
                  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(procs[0].pid, signal.SIGINT)  # a forked worker has no guard: KeyboardInterrupt
    wait(procs[1:])
    procs[0].join(30)
    trials = load(url, name).trials
    assert procs[1].exitcode == 0 and sum(evaluated(t) for t in trials) >= 5
    (cut,) = [t for t in trials if t.state == TrialState.FAIL]
    assert cut.user_attrs[INTERRUPTED] and not evaluated(cut)
    # its candidate was re-queued and evaluated by the worker that went on
    assert any(t.params == cut.params and evaluated(t) for t in trials if t.number > cut.number)


# ------------------------------------------------------------------------- storage input
def test_study_with_other_directions_is_refused(url):
    optuna.create_study(storage=StorageSpec(url).open(), study_name="other", directions=["minimize"])
    with pytest.raises(StudyMismatch, match="optimizes"):
        create_or_join(StorageSpec(url).open(), DIRECTIONS, optuna.samplers.RandomSampler(),
                       None, "other")
    _, created = create_or_join(StorageSpec(url).open(), ["minimize"],
                                optuna.samplers.RandomSampler(), None, "other")
    assert not created


def test_a_worker_joining_before_the_settings_waits_for_them():
    """A worker that joins between the study's creation and its run settings waits for them
    (it would otherwise publish its own over them); a fake clock, no real waiting."""
    from optimize.cli import _await_run_settings

    study = optuna.create_study()
    now = [0.0]

    def sleep(s):
        now[0] += s
        if now[0] >= 2:
            study.set_user_attr("run", {"devices": ["arm"]})

    assert _await_run_settings(study, 30, lambda: now[0], sleep) == {"devices": ["arm"]}
    assert now[0] == 2
    assert _await_run_settings(optuna.create_study(), 30, lambda: now[0], sleep) == {}
    assert now[0] >= 32  # gave up after its timeout


def test_redact_hides_the_password():
    assert redact("postgresql://nas:s3cr:et@db:5432/x") == "postgresql://nas:***@db:5432/x"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"


def _search(tmp_path: Path, storage: str, *extra: str) -> list[str]:
    return ["--device", "amd-epyc", "--trials", "1", "--budget", "smoke", "--run-dir",
            str(tmp_path / "run"), "--storage", storage, *extra]


def assert_one_line_error(capsys, rc: int, *needles: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_wrong_password_is_one_line_before_any_trial(postgres, tmp_path, capsys):
    bad = postgres.replace(scale_out.PG_PASSWORD, "wrong")
    rc = search.main(_search(tmp_path, bad))
    assert_one_line_error(capsys, rc, "password authentication failed", "nas:***@")
    assert "wrong" not in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_unreachable_database_is_one_line(tmp_path, capsys):
    port = scale_out._free_port()  # nothing listens there
    rc = search.main(_search(tmp_path, f"postgresql://nas:pw@127.0.0.1:{port}/nas"))
    assert_one_line_error(capsys, rc, "cannot connect", "refused")
    assert not (tmp_path / "run").exists()


def test_missing_driver_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    rc = search.main(_search(tmp_path, "postgresql://nas:pw@127.0.0.1:1/nas"))
    assert_one_line_error(capsys, rc, "driver is not installed", "psycopg")


@pytest.mark.parametrize("storage, needle", [
    ("nowhere", "not a storage URL"),
    ("journal:/nonexistent-dir/study.log", "does not exist"),
    ("journal:", "name a log file"),
])
def test_bad_storage_urls(storage, needle, tmp_path, capsys):
    assert_one_line_error(capsys, search.main(_search(tmp_path, storage)), needle)


def test_bad_heartbeat(tmp_path, capsys):
    rc = search.main(_search(tmp_path, f"journal:{tmp_path / 's.log'}", "--heartbeat", "0"))
    assert_one_line_error(capsys, rc, "--heartbeat")


def test_study_of_another_tool_is_one_line_before_any_trial(tmp_path, capsys):
    url = f"journal:{tmp_path / 's.log'}"
    optuna.create_study(storage=StorageSpec(url).open(), study_name="theirs", directions=["minimize"])
    rc = search.main(_search(tmp_path, url, "--study-name", "theirs"))
    assert_one_line_error(capsys, rc, "'theirs'", "optimizes ['minimize']", "--study-name")
    assert not load(url, "theirs").trials


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def two_workers(postgres, tmp_path_factory) -> list[tuple[int, str, str]]:
    """Two `search.py` commands started at once on one PostgreSQL study (--trials 4)."""
    tmp = tmp_path_factory.mktemp("e2e")
    argv = ["--device", "amd-epyc", "--trials", "4", "--budget", "smoke", "--storage", postgres,
            "--study-name", "e2e", "--heartbeat", "2", "--seed", "0"]
    procs = [subprocess.Popen([PYTHON, "search.py", *argv, "--run-dir", str(tmp / f"w{k}")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


@pytest.mark.slow  # two search.py processes: ~50 s on the 2-core machine
def test_two_search_workers_share_one_study(two_workers, postgres):
    """They share --trials 4; the creator scores the presets once, the other says it joined;
    the password appears nowhere."""
    for rc, out, err in two_workers:
        assert rc == 0, err[-3000:]
        assert "Traceback" not in err and "nas:***@" in out and scale_out.PG_PASSWORD not in out
    joined = [out for _, out, _ in two_workers if "joined study 'e2e'" in out]
    scored = [out for _, out, _ in two_workers if "preset fasternet_t0" in out]
    assert len(joined) == 1 and len(scored) == 1 and joined != scored
    study = load(postgres, "e2e")
    counted = [t for t in study.trials if evaluated(t)]
    assert 4 <= len(counted) <= 5 and not trained_twice(study.trials)
    assert set(study.user_attrs["presets"]) == {"fasternet_t0", "fasternet_t1", "fasternet_t2"}
    run = study.user_attrs["run"]
    assert scale_out.PG_PASSWORD not in json.dumps(run)
    assert run["study_name"] == "e2e" and "nas:***@127.0.0.1" in run["storage"]


@pytest.mark.slow
def test_show_rebuilds_the_run_folder_from_the_storage_alone(two_workers, postgres, tmp_path,
                                                             capsys):
    elsewhere = tmp_path / "rebuilt"
    assert search.main(["show", str(elsewhere), "--storage", postgres, "--study-name", "e2e"]) == 0
    assert "fasternet_t0" in capsys.readouterr().out
    study = load(postgres, "e2e")
    for f in ("trials.csv", "pareto.csv", "report.md", "run.json"):
        assert (elsewhere / f).exists(), f
    assert (elsewhere / "trials.csv").read_text().count("\n") == len(study.trials) + 1


@pytest.mark.slow
def test_joining_with_other_settings_is_one_line_before_any_trial(two_workers, postgres, tmp_path,
                                                                  capsys):
    n = len(load(postgres, "e2e").trials)
    argv = ["--device", "amd-epyc", "--trials", "6", "--budget", "smoke", "--storage", postgres,
            "--study-name", "e2e", "--seed", "1", "--run-dir", str(tmp_path / "run")]
    assert_one_line_error(capsys, search.main(argv), "was started with seed 0", "gives 1")
    assert len(load(postgres, "e2e").trials) == n


def test_show_of_a_missing_study_is_one_line(tmp_path, capsys):
    url = f"journal:{tmp_path / 's.log'}"
    StorageSpec(url).open()
    rc = search.main(["show", str(tmp_path / "x"), "--storage", url, "--study-name", "nope"])
    assert_one_line_error(capsys, rc, "no study named 'nope'")


def test_postgres_extra_is_what_setup_installs():
    """`make setup` installs requirements.txt; the pyproject's `postgres` extra pins the same."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()}
    assert extra["postgres"] and set(extra["postgres"]) <= pins


def test_storage_error_type_is_a_value_error():
    with pytest.raises(StorageError):
        StorageSpec("journal:/nonexistent-dir/x.log").open()
