"""search.py end to end: a real search with the smoke budget, the run folder, show, export,
bad input, resume after kill -9, Ctrl-C, determinism across processes, and the Ray backend.

Each subprocess pays the torch/timm import (several seconds on a busy machine), so the
searches run as subprocesses (two side by side for determinism; one more each for resume
and Ctrl-C), and show, export and bad input run in-process through `search.main` on the
shared finished run (the same code path, minus the interpreter start).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import timm
import torch

import search
from optimize import evaluated
from optimize.objective import INTERRUPTED
from search_space import ArchConfig

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PY if VENV_PY.exists() else sys.executable)
STUDY = "pconv-nas"
TIMING_COLUMNS = ["proxy_seconds", "started", "finished"]
RUN_FILES = ("study.db", "trials.csv", "pareto.csv", "pareto.png", "report.md", "run.json")


def search_argv(run_dir: Path, trials: int = 3, *extra: str) -> list[str]:
    """One worker (the default is one per core): its trial order, hence its run, is
    repeatable, and Ctrl-C is held during storage writes (`optimize.interrupt`)."""
    return ["--device", "amd-epyc", "--trials", str(trials), "--budget", "smoke",
            "--run-dir", str(run_dir), "--seed", "0", "--workers", "1", *extra]


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "search.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def start(args: list[str], log: Path) -> subprocess.Popen:
    """The search in the background; stdout and stderr go to LOG.out and LOG.err."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen([PYTHON, "search.py", *args], cwd=ROOT, stdout=out, stderr=err)


def load(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{run_dir / 'study.db'}")


def complete_count(db: Path) -> int:
    """COMPLETE trials in a study.db that another process is writing (read-only peek)."""
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def drawn_running_count(db: Path) -> int:
    """RUNNING trials whose candidate is drawn (its `arch` is stored): they are in the proxy."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
        return con.execute("SELECT count(*) FROM trials t JOIN trial_user_attributes a "
                           "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'arch'"
                           ).fetchone()[0]


def wait_for_complete(proc: subprocess.Popen, db: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while complete_count(db) < n:
        assert proc.poll() is None, f"the search exited ({proc.returncode}) before {n} trials completed"
        assert time.monotonic() < deadline, f"no {n} complete trials after {timeout} s"
        time.sleep(0.1)


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0]


def trials_without_timing(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "trials.csv").drop(columns=TIMING_COLUMNS)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[tuple[Path, subprocess.CompletedProcess]]:
    """`search.py --device amd-epyc --trials 3 --budget smoke --seed 0` twice, in two fresh
    processes started side by side (the second is only for the determinism test)."""
    root = tmp_path_factory.mktemp("search")
    procs = [(root / name, start(search_argv(root / name), root / name)) for name in ("run", "again")]
    out = []
    for run_dir, proc in procs:
        rc = proc.wait(timeout=300)
        done = subprocess.CompletedProcess(proc.args, rc, run_dir.with_suffix(".out").read_text(),
                                           run_dir.with_suffix(".err").read_text())
        assert rc == 0, done.stderr
        out.append((run_dir, done))
    return out


@pytest.fixture(scope="module")
def finished_run(two_runs) -> tuple[Path, subprocess.CompletedProcess]:
    return two_runs[0]


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run (for tests that rewrite or delete its files)."""
    return Path(shutil.copytree(finished_run[0], tmp_path / "run"))


# ------------------------------------------------------------------------------ end to end
def test_search_writes_a_complete_run_folder(finished_run):
    run_dir, proc = finished_run
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    study = load(run_dir)
    assert sum(evaluated(t) for t in study.trials) == 3

    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 3
    assert set(trials["state"]) <= {"complete", "stopped_early", "fail"}
    assert trials["latency_ms_amd-epyc"].gt(0).all()
    assert (run_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    pareto = pd.read_csv(run_dir / "pareto.csv")
    assert len(pareto) >= 1 and set(pareto["device"]) == {"amd-epyc"}
    assert set(pareto["arch_id"]) <= set(trials["arch_id"])
    assert sorted(p.stem for p in (run_dir / "archs").glob("*.yaml")) == sorted(pareto["arch_id"])
    # the front is the non-dominated set of the complete trials
    done = trials[trials["state"] == "complete"]
    for _, row in done.iterrows():
        acc, ms = done["accuracy"], done["latency_ms_amd-epyc"]
        beaten = ((acc >= row["accuracy"]) & (ms <= row["latency_ms_amd-epyc"])
                  & ((acc > row["accuracy"]) | (ms < row["latency_ms_amd-epyc"]))).any()
        assert (row["arch_id"] in set(pareto["arch_id"])) == (not beaten)


def test_front_archs_load_and_build_with_timm(finished_run):
    run_dir, _ = finished_run
    for path in sorted((run_dir / "archs").glob("*.yaml")):
        arch = ArchConfig.from_file(path)
        assert arch.arch_id == path.stem
        model = timm.create_model("pconv_fasternet", arch=str(path), num_classes=10).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_run_json_describes_the_run(finished_run):
    run_dir, _ = finished_run
    run = json.loads((run_dir / "run.json").read_text())
    assert run["argv"] == ["search.py", *search_argv(run_dir)]
    assert run["seed"] == 0 and run["devices"] == ["amd-epyc"] and run["trials"] == 3
    assert set(run["versions"]) >= {"python", "torch", "timm", "optuna"}
    assert run["versions"]["optuna"] == optuna.__version__
    assert run["tables"]["amd-epyc"]["source"] == "measured"
    assert run["tables"]["amd-epyc"]["name"] == "amd-epyc"
    assert "amd-epyc" in run["sources"]["amd-epyc"] or "AMD" in run["sources"]["amd-epyc"]
    assert "steps=4" in run["budget"]


def test_output_names_latency_source_and_presets(finished_run):
    run_dir, proc = finished_run
    source = json.loads((run_dir / "run.json").read_text())["sources"]["amd-epyc"]
    assert f"latency on amd-epyc: {source}" in proc.stdout
    for name in ("fasternet_t0", "fasternet_t1", "fasternet_t2"):
        assert f"preset {name}" in proc.stdout
        assert name in (run_dir / "report.md").read_text()
    assert f"Latency source: {source}" in (run_dir / "report.md").read_text()
    assert "Traceback" not in proc.stderr


def test_same_seed_gives_the_same_trials_in_a_fresh_process(two_runs):
    (first, _), (second, _) = two_runs
    a, b = trials_without_timing(first), trials_without_timing(second)
    assert len(a) == 3 and a["accuracy"].notna().all()
    pd.testing.assert_frame_equal(a, b)
    assert not pd.read_csv(first / "trials.csv")[TIMING_COLUMNS].equals(
        pd.read_csv(second / "trials.csv")[TIMING_COLUMNS])  # the two runs were really separate


# -------------------------------------------------------------------------------- show
def test_show_regenerates_every_file_from_study_db(run_copy, capsys):
    before = {name: (run_copy / name).read_text() for name in ("trials.csv", "pareto.csv", "report.md")}
    archs = sorted(p.name for p in (run_copy / "archs").iterdir())
    for path in run_copy.iterdir():
        if path.name != "study.db":
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    assert search.main(["show", str(run_copy)]) == 0
    stdout = capsys.readouterr().out
    for name in RUN_FILES:
        assert (run_copy / name).is_file(), name
    assert sorted(p.name for p in (run_copy / "archs").iterdir()) == archs
    for name, text in before.items():
        assert (run_copy / name).read_text() == text, name
    assert "Pareto front on amd-epyc" in stdout
    assert json.loads((run_copy / "run.json").read_text())["seed"] == 0


# ------------------------------------------------------------------------------- export
def front_of(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "pareto.csv").sort_values("latency_ms_amd-epyc")


@pytest.mark.parametrize("pick", ["fastest", "most-accurate", "knee", "arch_id"])
def test_export_pick(finished_run, tmp_path, capsys, pick):
    run_dir, _ = finished_run
    front = front_of(run_dir)
    expected = {"fastest": front["arch_id"].iloc[0],
                "most-accurate": front.loc[front["accuracy"].idxmax(), "arch_id"],
                "arch_id": front["arch_id"].iloc[-1]}.get(pick)
    out = tmp_path / "x.yaml"
    rc = search.main(["export", str(run_dir), "--pick", expected if pick == "arch_id" else pick,
                      "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    arch = ArchConfig.from_file(out)
    assert arch.arch_id in set(front["arch_id"])
    if expected is not None:
        assert arch.arch_id == expected
    assert arch == ArchConfig.from_file(run_dir / "archs" / f"{arch.arch_id}.yaml")
    model = timm.create_model("pconv_fasternet", arch=str(out), num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_train_picks_a_front_member_as_export_does(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    fastest = front_of(run_dir)["arch_id"].iloc[0]
    out = tmp_path / "trained"
    rc = search.main(["train", str(run_dir), "--pick", "fastest", "--limit-train", "256",
                      "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert f"{fastest} of {run_dir}" in capsys.readouterr().out
    assert ArchConfig.from_file(out / "arch.yaml").arch_id == fastest
    rc = search.main(["train", str(run_dir), "--pick", "nope", "--out", str(tmp_path / "x")])
    assert_one_line_error(rc, capsys.readouterr().err, "--pick 'nope'")
    assert not (tmp_path / "x").exists()


def test_export_max_latency(finished_run, tmp_path, capsys):
    run_dir, _ = finished_run
    front = front_of(run_dir)
    fastest = front.iloc[0]
    out = tmp_path / "x.yaml"
    rc = search.main(["export", str(run_dir), "--max-latency", str(fastest["latency_ms_amd-epyc"] + 1e-6),
                      "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert ArchConfig.from_file(out).arch_id == fastest["arch_id"]

    capsys.readouterr()
    rc = search.main(["export", str(run_dir), "--max-latency", "0.001", "--out", str(tmp_path / "y.yaml")])
    assert_one_line_error(rc, capsys.readouterr().err, "within 0.001 ms")
    assert not (tmp_path / "y.yaml").exists()


def test_export_onnx_runs_in_onnxruntime(finished_run, tmp_path, capsys):
    import onnxruntime as ort

    run_dir, _ = finished_run
    out, onnx = tmp_path / "x.yaml", tmp_path / "model.onnx"
    rc = search.main(["export", str(run_dir), "--pick", "knee", "--out", str(out), "--onnx", str(onnx)])
    assert rc == 0, capsys.readouterr().err
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    ArchConfig.from_file(out)
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert list(inp.shape) == [1, 3, 224, 224]
    (logits,) = sess.run(None, {inp.name: np.random.default_rng(0).standard_normal(
        (1, 3, 224, 224), dtype=np.float32)})
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


def test_export_run_member_for_a_runtime(finished_run, tmp_path, capsys):
    """`export RUN --pick P --runtime R`: the runtime's file, the front's predicted latency with
    its table, and the latency measured here (tests/test_runtimes.py covers the rest)."""
    import onnxruntime as ort

    run_dir, _ = finished_run
    out = tmp_path / "m.onnx"
    rc = search.main(["export", str(run_dir), "--pick", "fastest", "--runtime", "onnxruntime",
                      "--out", str(out), "--resolution", "32", "--num-classes", "10"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "predicted by table 'amd-epyc': measured on AMD EPYC" in text.out
    assert "ms per image measured here" in text.out and "onnxruntime" in text.out
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, 32, 32), np.float32)})
    assert logits.shape == (1, 10)
    rc = search.main(["export", str(run_dir), "--runtime", "onnxruntime", "--out", str(out)])
    assert_one_line_error(rc, capsys.readouterr().err, "needs --pick or --max-latency")


@pytest.mark.parametrize("args, needle", [
    (["--pick", "fn-0000000000"], "fn-0000000000"),
    (["--pick", "knee", "--device", "arm"], "--device 'arm'"),
])
def test_export_bad_input(finished_run, tmp_path, capsys, args, needle):
    rc = search.main(["export", str(finished_run[0]), *args, "--out", str(tmp_path / "x.yaml")])
    assert_one_line_error(rc, capsys.readouterr().err, needle)


def test_show_and_export_need_a_run_folder(tmp_path, capsys):
    assert_one_line_error(search.main(["show", str(tmp_path)]), capsys.readouterr().err, "no study.db")
    rc = search.main(["export", str(tmp_path), "--pick", "knee", "--out", str(tmp_path / "x.yaml")])
    assert_one_line_error(rc, capsys.readouterr().err, "no study.db")


# -------------------------------------------------------------------------------- faults
def test_unknown_device_is_one_line_listing_the_tables(tmp_path, capsys):
    from latency_tables import available

    rc = search.main(["--device", "nope", "--trials", "1", "--budget", "smoke",
                      "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, "--device nope", "amd-epyc")
    assert all(name in err for name in available())
    assert not (tmp_path / "run").exists()


def _bad_space(tmp_path: Path) -> list[str]:
    path = tmp_path / "space.yaml"
    path.write_text("widths: [[8], [16]]\ndepths: [[1], [1]]\nstages: 2\nwidth: [3]\n")
    return ["--space", str(path)]


def _under_a_file(tmp_path: Path) -> list[str]:
    (tmp_path / "file").write_text("")
    return ["--run-dir", str(tmp_path / "file" / "run")]


def _existing_study(tmp_path: Path) -> list[str]:
    (tmp_path / "old").mkdir()
    optuna.create_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'old' / 'study.db'}")
    return ["--run-dir", str(tmp_path / "old")]


FAULTS = {
    "bad-space-key": (_bad_space, "--space"),
    "missing-space": (lambda p: ["--space", str(p / "nope.yaml")], "nope.yaml"),
    "run-dir-under-a-file": (_under_a_file, "not writable"),
    "resume-without-study": (lambda p: ["--resume"], "no study.db"),
    "study-without-resume": (_existing_study, "--resume"),
    "max-latency-not-a-number": (lambda p: ["--max-latency", "abc"], "--max-latency"),
    "max-latency-negative": (lambda p: ["--max-latency", "-3"], "--max-latency"),
    "max-latency-other-device": (lambda p: ["--max-latency", "gpu=3"], "'gpu'"),
    "score-without-target": (lambda p: ["--objective", "score"], "--target-latency"),
    "trials-zero": (lambda p: ["--trials", "0"], "--trials"),
    "promote-first-rung-not-budget": (lambda p: ["--promote", "quick,full"], "search's --budget"),
    "promote-one-rung": (lambda p: ["--promote", "smoke"], "at least two rungs"),
    "promote-not-costlier": (lambda p: ["--promote", "smoke,smoke,lr=1e-3"], "must cost more"),
    "promote-bad-field": (lambda p: ["--promote", "smoke,smoke,stepz=8"], "stepz"),
    "eta-one": (lambda p: ["--promote", "smoke,quick", "--eta", "1"], "--eta"),
    "eta-without-promote": (lambda p: ["--eta", "2"], "--eta applies with --promote"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_input_exits_2_with_one_line(fault, tmp_path, capsys):
    make, needle = FAULTS[fault]
    extra = make(tmp_path)
    argv = search_argv(tmp_path / "run", 1)
    if "--run-dir" in extra:
        i = argv.index("--run-dir")
        del argv[i:i + 2]
    rc = search.main([*argv, *extra])
    assert_one_line_error(rc, capsys.readouterr().err, needle)
    assert not (tmp_path / "run" / "study.db").exists()
    if fault == "study-without-resume":  # the old study is untouched
        assert load(tmp_path / "old").trials == []


# ------------------------------------------------------------------------ proxy device
def test_run_json_and_first_lines_say_where_candidates_train(finished_run):
    run_dir, proc = finished_run
    run = json.loads((run_dir / "run.json").read_text())
    assert run["proxy_device"] == {"device": "cpu", "name": "cpu", "precision": "fp32",
                                   "determinism": "exact"}
    assert run["parallel"] == "threads"
    # (the suite trusts the shipped table: its WARNING line comes first, `conftest.py`)
    first = next(line for line in proc.stdout.splitlines() if not line.startswith("WARNING:"))
    assert first.startswith("proxy on cpu: fp32, exact determinism; ")
    assert f"; {run['workers']} trial(s) at a time" in first


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


DEVICE_FAULTS = {
    "malformed": (["--proxy-device", "gpu0"], "--proxy-device"),
    "cuda-absent": (["--proxy-device", "cuda"], "CUDA is not available"),
    "cuda-index-absent": (["--proxy-device", "cuda:1"], "CUDA is not available"),
    "gpus-per-trial-negative": (["--backend", "ray", "--gpus-per-trial", "-1"], ">= 0"),
    "gpus-per-trial-without-ray": (["--gpus-per-trial", "1"], "--backend ray"),
    "parallel-with-ray": (["--backend", "ray", "--parallel", "processes"], "--backend optuna"),
}


@pytest.mark.parametrize("fault", list(DEVICE_FAULTS))
def test_bad_proxy_device_exits_2_before_any_trial(fault, no_cuda, tmp_path, capsys):
    extra, needle = DEVICE_FAULTS[fault]
    rc = search.main([*search_argv(tmp_path / "run", 1), *extra])
    assert_one_line_error(rc, capsys.readouterr().err, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("extra", "needle"), [
    (["--proxy-device", "cuda", "--parallel", "threads", "--workers", "2"], "--parallel processes"),
    (["--proxy-device", "cuda", "--backend", "ray", "--gpus-per-trial", "0"], "--gpus-per-trial"),
    (["--proxy-device", "cuda:0", "--proxy", "nope"], "unknown proxy"),
])
def test_cuda_settings_that_cannot_work_exit_2(extra, needle, fake_cuda, tmp_path, capsys):
    """With a (faked) GPU: threads sharing torch's global settings on CUDA, a CUDA proxy with
    no GPU per Ray trial; a bad proxy name still fails before any trial."""
    rc = search.main([*search_argv(tmp_path / "run", 1), *extra])
    assert_one_line_error(rc, capsys.readouterr().err, needle)
    assert not (tmp_path / "run" / "study.db").exists()


@pytest.mark.slow
def test_worker_processes_search_end_to_end(tmp_path):
    """--workers 2 --parallel processes on the CPU: the path a GPU takes by default."""
    run_dir = tmp_path / "run"
    proc = cli(*search_argv(run_dir, 4), "--workers", "2", "--parallel", "processes")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    trials = load(run_dir).trials
    counted = [t for t in trials if evaluated(t)]
    assert 4 <= len(counted) <= 5 and not any(t.state.name == "RUNNING" for t in trials)
    assert len({t.user_attrs["arch_id"] for t in counted}) >= 4
    assert len(pd.read_csv(run_dir / "trials.csv")) == len(trials)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["parallel"] == "processes" and run["workers"] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("parallel", [[], ["--parallel", "processes"]], ids=["default", "processes"])
def test_cuda_search_with_two_workers(parallel, tmp_path):
    """A real search on the GPU, two candidates at a time in two processes (the default)."""
    run_dir = tmp_path / "run"
    proc = cli(*search_argv(run_dir, 4), "--proxy-device", "cuda", "--workers", "2", *parallel)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best-effort determinism" in proc.stdout.splitlines()[0]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["proxy_device"]["device"] == "cuda:0"
    assert run["proxy_device"]["determinism"] == "best-effort"
    assert run["parallel"] == "processes"
    trials = load(run_dir).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sum(evaluated(t) for t in trials) >= 4 and complete
    assert all(0 <= t.user_attrs["accuracy"] <= 1 for t in complete)


@pytest.mark.gpu
@pytest.mark.slow
def test_ray_backend_packs_two_trials_per_gpu(tmp_path):
    run_dir = tmp_path / "run"
    proc = cli(*search_argv(run_dir, 2), "--backend", "ray", "--workers", "2",
               "--gpus-per-trial", "0.5", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["gpus_per_trial"] == 0.5
    assert sum(evaluated(t) for t in load(run_dir).trials) == 2


# ------------------------------------------------------------------- repeated proposals
ONE_ARCH_SPACE = """stages: 4
widths: [[40], [80], [160], [320]]
depths: [[1], [2], [8], [2]]
n_divs: [4]
mlp_ratios: [2]
kernel_sizes: [3]
act: [gelu]
feature_dim: [1280]
patch_size: [4]
merge_size: [2]
"""


def test_space_smaller_than_trials_stops_with_the_distinct_count(tmp_path, monkeypatch, capsys):
    """A space of one architecture (FasterNet-T0) and --trials 3: the sampler can only repeat
    it. Repeats are recorded, not trained or counted; the bound stops the run with one line,
    and the run folder is written with the architecture once on the front."""
    from test_optimize import FakeProxy

    proxy = FakeProxy(lambda arch: {2: 0.5, 4: 0.6})
    monkeypatch.setattr("proxies.make_proxy", lambda name, **kwargs: proxy)
    monkeypatch.setattr("optimize.runner._MAX_REPEATS_IN_A_ROW", 5)
    (tmp_path / "one.yaml").write_text(ONE_ARCH_SPACE)
    run_dir = tmp_path / "run"
    rc = search.main([*search_argv(run_dir, 3), "--space", str(tmp_path / "one.yaml")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    stopped = [line for line in out.splitlines() if line.startswith("search stopped")]
    assert stopped == ["search stopped: the last 5 proposals were all architectures already "
                       "evaluated; distinct architectures evaluated: 1 of 3 asked for (the space "
                       "may hold fewer; a random sampler or another seed may find more)"]
    assert out.count("repeat of trial 0, not counted (complete)") == 5
    # trained once (then the three presets, scored by the same proxy)
    assert [a.arch_id for a in proxy.calls[:1]] == [ArchConfig.from_file(p).arch_id
                                                    for p in (run_dir / "archs").glob("*.yaml")]
    assert len(proxy.calls) == 1 + 3

    trials = load(run_dir).trials
    assert len(trials) == 6 and sum(evaluated(t) for t in trials) == 1
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None, 0, 0, 0, 0, 0]
    csv = pd.read_csv(run_dir / "trials.csv")
    assert len(csv) == 6 and csv["duplicate_of"].isna().sum() == 1
    pareto = pd.read_csv(run_dir / "pareto.csv")
    assert pareto[["name", "proposed"]].values.tolist() == [["trial 0", 6]]
    (row,) = [line for line in out.splitlines() if line.strip().startswith("trial 0 ")]
    assert row.split()[2] == "x6"
    assert "| trial 0 |" in (run_dir / "report.md").read_text()


# ---------------------------------------------------------------- multi-fidelity promotion
PROMOTE = ["--promote", "smoke,smoke,steps=8"]
TOP = "smoke,steps=8"


def fake_fidelities(monkeypatch, interrupt: bool = False) -> dict:
    """`proxies.make_proxy` -> a FakeProxy per budget: the search's budget gives the wobbly
    accuracy, the longer one reverses it (so promotion changes the front); with `interrupt`,
    the first promotion is cut by Ctrl-C."""
    from test_optimize import FakeProxy, wobbly_accuracy

    from proxies import Budget

    made: dict = {}
    cut = [interrupt]

    def longer(arch: ArchConfig) -> dict[int, float]:
        if cut[0]:
            cut[0] = False
            raise KeyboardInterrupt
        return {s: 0.9 - a for s, a in wobbly_accuracy(arch).items()}

    def make(name: str, *, budget: str, **kwargs: object) -> FakeProxy:
        b = Budget.parse(budget)
        if b not in made:
            made[b] = FakeProxy(wobbly_accuracy if b.steps == 4 else longer)
            made[b].budget = b
        return made[b]

    monkeypatch.setattr("proxies.make_proxy", make)
    return made


def promoted_search(run_dir: Path, capsys, *extra: str) -> tuple[int, str]:
    rc = search.main([*search_argv(run_dir, 6), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return rc, out


def test_promotion_end_to_end_and_show_rebuilds_it(tmp_path, monkeypatch, capsys):
    made = fake_fidelities(monkeypatch)
    run_dir = tmp_path / "run"
    rc, out = promoted_search(run_dir, capsys, *PROMOTE)
    assert rc == 0
    trials = load(run_dir).trials
    promoted = [t for t in trials if "rung" in t.user_attrs]
    assert sum(evaluated(t) for t in trials) == 6 and promoted  # promotions do not count
    assert all(t.user_attrs["fidelity"] == TOP for t in promoted)
    assert out.count("promotion of trial") == len(promoted)
    assert "proxy time per rung: rung 0 (smoke): 6 trained" in out
    assert f"rung 1 ({TOP}): {len(promoted)} trained" in out
    pareto = pd.read_csv(run_dir / "pareto.csv")
    assert set(pareto["fidelity"]) == {TOP}  # no front member left at the search's budget
    by_number = {t.number: t for t in trials}
    for _, row in pareto.iterrows():
        assert row["accuracy"] == by_number[row["number"]].user_attrs["accuracy"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["promote"] == {"rungs": ["smoke", TOP], "eta": 3} and run["fidelity"] == "smoke"
    report = (run_dir / "report.md").read_text()
    assert "Promotion (MO-ASHA, eta 3, rungs smoke -> smoke,steps=8)" in report
    assert f"| fasternet_t0 | {TOP} |" in report  # presets scored at the top rung reached
    assert len([c for b, c in made.items() if b.steps == 8][0].calls) == len(promoted) + 3

    before = {name: (run_dir / name).read_text() for name in ("trials.csv", "pareto.csv", "report.md")}
    for path in run_dir.iterdir():
        if path.name != "study.db":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert search.main(["show", str(run_dir)]) == 0
    for name, text in before.items():
        assert (run_dir / name).read_text() == text, name


def test_resume_finishes_an_interrupted_promotion(tmp_path, monkeypatch, capsys):
    fake_fidelities(monkeypatch)
    whole = tmp_path / "whole"
    assert promoted_search(whole, capsys, *PROMOTE)[0] == 0

    fake_fidelities(monkeypatch, interrupt=True)
    run_dir = tmp_path / "run"
    assert promoted_search(run_dir, capsys, *PROMOTE)[0] == 130
    cut = load(run_dir).trials
    assert sum(evaluated(t) for t in cut) == 6 and not any("rung" in t.user_attrs for t in cut)
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in cut)
    rc, out = promoted_search(run_dir, capsys, "--resume")  # --promote as the run was started
    assert rc == 0 and "resume: promotion smoke,smoke,steps=8 (eta 3) as started" in out
    pd.testing.assert_frame_equal(trials_without_timing(run_dir), trials_without_timing(whole))
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "pareto.csv").drop(columns=TIMING_COLUMNS),
                                  pd.read_csv(whole / "pareto.csv").drop(columns=TIMING_COLUMNS))


# --------------------------------------------------------------------- interruption, resume
def test_resume_after_kill_9(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(search_argv(run_dir, 6), tmp_path / "first")
    try:
        wait_for_complete(proc, run_dir / "study.db", 2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = load(run_dir).trials
    before = {t.number: t.values for t in killed if t.state == optuna.trial.TrialState.COMPLETE}
    running = [t for t in killed if t.state == optuna.trial.TrialState.RUNNING]
    assert len(before) >= 2 and sum(evaluated(t) for t in killed) < 6

    again = cli(*search_argv(run_dir, 6), "--resume")
    assert again.returncode == 0, again.stderr
    trials = load(run_dir).trials
    assert sum(evaluated(t) for t in trials) >= 6
    for t in trials:
        if t.number in before:
            assert t.state == optuna.trial.TrialState.COMPLETE and t.values == before[t.number]
    for z in running:  # the trial cut off by the kill: FAIL, flagged, not counted
        assert f"resume: {len(running)} interrupted" in again.stdout
        cut = trials[z.number]
        assert cut.state == optuna.trial.TrialState.FAIL and cut.user_attrs[INTERRUPTED]
        assert not evaluated(cut)
        if "arch" in z.user_attrs:  # its candidate was fully drawn: evaluated again on resume
            assert any(t.params == z.params and evaluated(t) for t in trials[z.number + 1:])
    assert len(pd.read_csv(run_dir / "trials.csv")) == len(trials)
    assert json.loads((run_dir / "run.json").read_text())["argv"][-1] == "--resume"


def test_ctrl_c_exits_cleanly_and_keeps_finished_trials(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(search_argv(run_dir, 6), tmp_path / "log")
    try:
        wait_for_complete(proc, run_dir / "study.db", 1)
        deadline = time.monotonic() + 60
        while drawn_running_count(run_dir / "study.db") == 0:  # interrupt the proxy, mid-trial
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    err = (tmp_path / "log.err").read_text()
    assert rc == 130, err
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err
    trials = load(run_dir).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(t.user_attrs["checkpoints"] for t in complete)
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    (cut,) = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    # the trial cut off by Ctrl-C is not counted, and its candidate waits for --resume
    assert cut.user_attrs[INTERRUPTED] and not evaluated(cut)
    assert any(w.state == optuna.trial.TrialState.WAITING
               and w.system_attrs.get("fixed_params") == cut.params for w in trials)


# ---------------------------------------------------------------------------------- ray
@pytest.mark.slow
def test_ray_backend(tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("--device", "amd-epyc", "--trials", "2", "--budget", "smoke", "--backend", "ray",
               "--workers", "1", "--run-dir", str(run_dir), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load(run_dir).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    for t in complete:
        assert ArchConfig.from_dict(t.user_attrs["arch"]).arch_id == t.user_attrs["arch_id"]
        assert t.values[0] == t.user_attrs["accuracy"]
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert len(pd.read_csv(run_dir / "trials.csv")) == 2


# ------------------------------------------------------------------------------ Optuna citizen
def test_study_names_its_objectives(finished_run):
    """`optuna trials` and optuna-dashboard show the names, not values_0, values_1."""
    assert load(finished_run[0]).metric_names == ["accuracy", "latency_ms:amd-epyc"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_optuna_dashboard_serves_the_runs_study(run_copy, tmp_path):
    exe = Path(PYTHON).parent / "optuna-dashboard"
    if importlib.util.find_spec("optuna_dashboard") is None or not exe.exists():
        pytest.skip(f"optuna-dashboard is not installed next to {PYTHON} "
                    "(`make setup` installs it from requirements.txt)")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "dashboard.log", "w") as log:
        server = subprocess.Popen([str(exe), f"sqlite:///{run_copy / 'study.db'}", "--host",
                                   "127.0.0.1", "--port", str(port)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:  # not listening yet
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.2)
        assert [(s["study_name"], s["directions"]) for s in studies] == [(STUDY, ["maximize", "minimize"])]
        detail = _get_json(f"{base}/api/studies/{studies[0]['study_id']}")
        study = load(run_copy)
        assert detail["objective_names"] == study.metric_names
        assert [t["number"] for t in detail["trials"]] == [t.number for t in study.trials]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_extra_is_what_setup_installs():
    """`make setup` installs requirements.txt; the pyproject extra must pin the same version."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()}
    assert extra["dashboard"] and set(extra["dashboard"]) <= pins


# ------------------------------------------------------------------------ tables and spaces
SPACE_BEYOND_THE_TABLES = """\
stages: 4
widths: [[28], [48], [96], [192]]  # no shipped table has a 28-wide stem
depths: [[1], [1], [2], [1]]
n_divs: [4]
mlp_ratios: [2]
kernel_sizes: [3]
act: [gelu]
feature_dim: [1024]
patch_size: [4]
merge_size: [2]
tie: []
"""


@pytest.mark.parametrize("device, fix", [
    ("arm", "python -m latency_tables calibrate --device arm --space {space} --resolution 224`"),
    ("amd-epyc", "python -m latency_tables build --device amd-epyc --space {space} --resolution 224 "
                 "--target cpu --batch 1 --threads 1`"),
])
def test_space_beyond_a_table_names_the_fix_for_its_source(device, fix, tmp_path, capsys):
    """A derived table is re-derived (anywhere); only a measured one suggests a measuring build."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_BEYOND_THE_TABLES)
    rc = search.main(["--device", device, "--trials", "1", "--budget", "smoke",
                      "--run-dir", str(tmp_path / "run"), "--space", str(space)])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, "stem:r224:c3-28:p4", fix.format(space=space))
    assert ("build" in err) == (device == "amd-epyc")
    assert not (tmp_path / "run" / "study.db").exists()
