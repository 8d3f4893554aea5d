"""The whole run's time budget (`optimize.budget`, `--timeout`) on a fake clock, and the disk
cache of the presets' proxy results (`optimize.cache`, `--no-cache`)."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import time
from pathlib import Path

import optuna
import pytest
from test_optimize import FakeProxy, FakeTable, ListSpace, flat, variant, wobbly_accuracy

import search
from optimize import Objective, run_optuna
from optimize.budget import REPORT_S, RunBudget, budget_name, trial_estimate
from optimize.cache import ProxyCache, ResultKey, cache_root, code_version
from optimize.cli import PRESET_NAMES, _score_presets
from optimize.runner import tally
from proxies import BUDGETS, Budget, ProxyResult
from search_space import PRESETS

ROOT = Path(__file__).resolve().parents[1]
T0, T1 = PRESETS["fasternet_t0"], PRESETS["fasternet_t1"]


class FakeClock:
    """Seconds since the epoch that move only when told: from the real now, so that the
    trials Optuna stamps with the real time count as this run's."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class TimedProxy(FakeProxy):
    """A `FakeProxy` whose every call costs `seconds` on `clock` and says so."""

    def __init__(self, clock: FakeClock, seconds: float, curve=wobbly_accuracy) -> None:
        super().__init__(curve)
        self.clock, self.seconds = clock, seconds

    def __call__(self, arch, *, callback=None) -> ProxyResult:
        self.clock.now += self.seconds
        return dataclasses.replace(super().__call__(arch, callback=callback), seconds=self.seconds)


# ------------------------------------------------------------------------------ RunBudget
def test_the_next_trial_is_estimated_from_the_recent_costs():
    assert trial_estimate([]) is None
    assert trial_estimate([10, 10, 10, 10, 50]) == 50  # few measured: the largest
    assert trial_estimate([10] * 9 + [100]) == 10      # 90th percentile of ten: one outlier off
    assert trial_estimate([1000] + [10] * 10) == 10    # the last ten only


def test_a_trial_starts_only_when_it_ends_before_the_reserve():
    clock = FakeClock()
    budget = RunBudget(seconds=100, start=clock(), after_s=10, clock=clock)
    assert budget.fits([])  # nothing measured: time is left
    clock.now += 60
    assert budget.fits([30]) and budget.for_trials([30]) == 30
    clock.now += 1
    assert not budget.fits([30])  # 39 s left, 10 of them reserved: a 30-s trial would overrun
    with_presets = dataclasses.replace(budget, presets=2)
    assert with_presets.reserve(30) == 2 * 30 + 10 and with_presets.reserve(None) == 10
    clock.now = budget.start + 95
    assert not budget.fits([])  # inside the reserve: not even an unmeasured trial


def test_no_budget_always_fits_and_bad_budgets_are_refused():
    unlimited = RunBudget(seconds=None, start=0.0, clock=lambda: 1e12)
    assert unlimited.fits([1e9]) and not unlimited.limited and unlimited.left() == float("inf")
    for seconds in (0, -1.0):
        with pytest.raises(ValueError, match="must be > 0"):
            RunBudget(seconds=seconds, start=0.0)


def test_the_shortfall_line_names_the_budget_and_the_options():
    assert RunBudget(seconds=600, start=0.0).shortfall(38, 40) == (
        "38 of 40 trials in the 10-minute budget; `--trials`/`--timeout` to change it")
    assert budget_name(90) == "90-second" and budget_name(120) == "2-minute"


def test_the_budget_travels_to_worker_processes():
    budget = RunBudget(seconds=600, start=time.time(), presets=3)
    assert pickle.loads(pickle.dumps(budget)) == budget


def timed_search(seconds_per_trial: float, budget: RunBudget | None, clock: FakeClock,
                 n_trials: int = 40) -> tuple[optuna.Study, TimedProxy]:
    proxy = TimedProxy(clock, seconds_per_trial, curve=lambda a: flat(0.5))
    obj = Objective(space=ListSpace([variant(i) for i in range(60)]), proxy=proxy,
                    latency={"d": FakeTable(lambda a: float(a.feature_dim))})
    study = optuna.create_study(directions=obj.directions,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    run_optuna(study, obj, n_trials, budget=budget)
    return study, proxy


@pytest.mark.parametrize("presets, trained", [(0, 10), (2, 8)])
def test_run_optuna_stops_starting_trials_that_would_not_fit(presets, trained):
    """30-s trials in 300 s: ten fit; with two presets to score afterwards (a trial's time
    each), the trials stop two earlier. The run ends within its budget."""
    clock = FakeClock()
    budget = RunBudget(seconds=300, start=clock(), presets=presets, after_s=0, clock=clock)
    study, proxy = timed_search(30, budget, clock)
    assert len(proxy.calls) == trained == tally(study.get_trials()).evaluated
    assert clock() - budget.start + presets * 30 <= 300


def test_without_a_budget_every_trial_runs():
    clock = FakeClock()
    study, proxy = timed_search(1000, None, clock, n_trials=12)
    assert tally(study.get_trials()).evaluated == 12


# --------------------------------------------------------------------- search.py, end to end
def budget_argv(run_dir: Path, *extra: str) -> list[str]:
    return ["--device", "amd-epyc", "--budget", "smoke", "--run-dir", str(run_dir),
            "--workers", "1", *extra]


def test_default_search_keeps_to_its_budget_and_reuses_the_cached_presets(tmp_path, monkeypatch,
                                                                          capsys):
    """40-s trials and the default 10 minutes: 3 uncached presets (40 s each) and the report
    (`REPORT_S`) are reserved, so 11 trials fit; the second run finds the presets cached,
    reserves only the report, fits 14 trials and trains no preset."""
    clock = FakeClock()
    proxy = TimedProxy(clock, 40)
    monkeypatch.setattr("proxies.make_proxy", lambda name, **kwargs: proxy)
    monkeypatch.setattr("optimize.cli._clock", clock)
    assert REPORT_S == 20  # the numbers below: 600 - 40 k - 3 * 40 - 20 >= 40 up to k = 10

    first = tmp_path / "first"
    assert search.main(budget_argv(first)) == 0
    out = capsys.readouterr().out
    assert "presets: 3 to score after the trials" in out
    assert "11 of 40 trials in the 10-minute budget; `--trials`/`--timeout` to change it" in out
    assert len(proxy.calls) == 11 + 3 and "[cached from" not in out
    run = json.loads((first / "run.json").read_text())
    assert run["time_budget"] == {"seconds": 600.0, "evaluated": 11, "trials": 40, "note": (
        "11 of 40 trials in the 10-minute budget; `--trials`/`--timeout` to change it")}
    assert "11 of 40 trials in the 10-minute budget" in (first / "report.md").read_text()
    presets = optuna.load_study(study_name="pconv-nas", storage=f"sqlite:///{first / 'study.db'}"
                                ).user_attrs["presets"]

    proxy.calls.clear()
    clock.now = time.time()  # back to the real now: the trials' (real) start stamps are this run's
    second = tmp_path / "second"
    assert search.main(budget_argv(second)) == 0
    out = capsys.readouterr().out
    assert f"presets: cached ({cache_root() / 'presets'})" in out
    assert "14 of 40 trials in the 10-minute budget" in out
    assert len(proxy.calls) == 14  # no preset trained
    assert out.count("[cached from ") == 3
    again = optuna.load_study(study_name="pconv-nas", storage=f"sqlite:///{second / 'study.db'}"
                              ).user_attrs["presets"]
    for name in PRESET_NAMES:
        assert again[name]["accuracy"] == presets[name]["accuracy"]
        assert again[name]["cached_from"] and presets[name]["cached_from"] is None

    proxy.calls.clear()
    assert search.main(budget_argv(tmp_path / "third", "--no-cache", "--trials", "2")) == 0
    out = capsys.readouterr().out
    assert "[cached from" not in out and "(--no-cache)" in out and len(proxy.calls) == 2 + 3


def test_timeout_0_switches_the_budget_off(tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    proxy = TimedProxy(clock, 1000)
    monkeypatch.setattr("proxies.make_proxy", lambda name, **kwargs: proxy)
    monkeypatch.setattr("optimize.cli._clock", clock)
    run_dir = tmp_path / "run"
    assert search.main(budget_argv(run_dir, "--trials", "4", "--timeout", "0")) == 0
    out = capsys.readouterr().out
    assert "time budget: none (--timeout 0)" in out and " of 4 trials" not in out
    run = json.loads((run_dir / "run.json").read_text())
    assert run["time_budget"]["evaluated"] == 4 and run["time_budget"]["note"] is None


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_bad_timeout_is_one_line_exit_2_and_writes_nothing(value, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert search.main(budget_argv(run_dir, "--timeout", value)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --timeout: {float(value)} must be >= 0 seconds (0: no budget)"]
    assert not run_dir.exists()


# ------------------------------------------------------------------------------ the cache
def key(**changes) -> ResultKey:
    arch = changes.pop("arch", T0)
    proxy = FakeProxy(wobbly_accuracy)
    for name in ("name", "budget", "seed"):
        if name in changes:
            setattr(proxy, name, changes.pop(name))
    kwargs = {"dataset": "fashion-mnist", "device": "cpu, fp32, 1 thread(s)",
              "torch_version": "2.0.0", "timm_version": "1.0.0", "code": "abc", **changes}
    return ResultKey.of(arch, proxy, **kwargs)


def test_every_input_of_the_key_changes_it():
    base = key()
    changed = {"arch": key(arch=T1), "proxy": key(name="other"), "dataset": key(dataset="cifar10"),
               "budget": key(budget=BUDGETS["quick"]), "seed": key(seed=1),
               "torch": key(torch_version="2.0.1"), "code": key(code="abd"),
               "device": key(device="cuda:0 (NVIDIA H100), bf16 autocast"),
               "timm": key(timm_version="1.0.1")}
    digests = {name: k.digest for name, k in changed.items()}
    assert base.digest not in digests.values()
    assert len(set(digests.values())) == len(digests)
    assert key().digest == base.digest  # and nothing else moves it
    # one budget spelled two ways is one key
    assert key(budget=Budget.parse("smoke")).digest == key(budget=Budget.parse("smoke,steps=4")).digest


def test_editing_the_proxy_code_changes_the_code_version(tmp_path):
    files = []
    for src in sorted((ROOT / "proxies").glob("*.py"))[:3]:
        (tmp_path / "proxies").mkdir(exist_ok=True)
        files.append(Path(shutil.copy(src, tmp_path / "proxies" / src.name)))
    before = code_version(files)
    assert code_version(files) == before
    files[0].write_text(files[0].read_text() + "\n# edited\n")
    assert code_version(files) != before
    assert code_version(files[1:]) != code_version(files)  # a file gone
    assert len(code_version()) == 16 and code_version() == code_version()


def test_the_cache_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("PCONV_NAS_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("PCONV_NAS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "pconv-nas"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "pconv-nas"


def cache_for(proxy: FakeProxy, root: Path) -> ProxyCache:
    return ProxyCache(proxy, dataset="fashion-mnist", device="cpu", root=root)


def test_a_stored_result_comes_back_whole(tmp_path):
    proxy = FakeProxy(wobbly_accuracy)
    result = dataclasses.replace(proxy(T0), budget=BUDGETS["smoke"], train_losses=((2, 1.5),),
                                 uncertainty=0.01, seconds=12.5)
    cache = cache_for(proxy, tmp_path)
    assert cache.get(T0) is None
    assert cache.put(T0, result)
    hit = cache.get(T0)
    assert hit is not None and hit.result == result
    assert [p.name for p in tmp_path.iterdir()] == [cache.path(T0).name]  # no temporary left


def test_failed_results_are_not_stored_and_an_unwritable_cache_is_no_error(tmp_path):
    proxy = FakeProxy(wobbly_accuracy, fail=lambda arch: "non-finite loss")
    assert not cache_for(proxy, tmp_path).put(T0, proxy(T0))
    (tmp_path / "file").write_text("")
    good = FakeProxy(wobbly_accuracy)
    assert not cache_for(good, tmp_path / "file" / "presets").put(T0, good(T0))


def score(proxy: FakeProxy, cache: ProxyCache | None) -> dict:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("run", {"fidelity": "smoke"})
    _score_presets(study, lambda arch: {"latency_ms": {"d": 1.0}, "params_m": 1.0}, proxy,
                   "smoke", cache=cache)
    return study.user_attrs["presets"]


def test_a_cache_hit_skips_the_proxy_and_a_corrupt_entry_is_recomputed(tmp_path, capsys):
    proxy = FakeProxy(wobbly_accuracy)
    cache = cache_for(proxy, tmp_path)
    first = score(proxy, cache)
    assert len(proxy.calls) == 3
    second = score(proxy, cache)
    assert len(proxy.calls) == 3  # every preset from the cache
    assert {n: r["accuracy"] for n, r in second.items()} == {n: r["accuracy"] for n, r in first.items()}
    assert capsys.readouterr().out.count("[cached from ") == 3

    cache.path(T0).write_text('{"key": ')  # a run killed mid-write, a full disk, an edit
    other = json.loads(cache.path(T1).read_text())
    other["key"]["code"] = "another"  # a file that is not the entry of its key
    cache.path(T1).write_text(json.dumps(other))
    score(proxy, cache)
    assert [a.arch_id for a in proxy.calls[3:]] == [T0.arch_id, T1.arch_id]
    assert cache.get(T0) is not None and cache.get(T1) is not None  # rewritten whole

    proxy.calls.clear()
    score(proxy, None)  # --no-cache
    assert len(proxy.calls) == 3


def test_an_unwritable_cache_is_said_once_per_preset_and_the_run_goes_on(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    proxy = FakeProxy(wobbly_accuracy)
    presets = score(proxy, cache_for(proxy, tmp_path / "file"))
    assert all(r["accuracy"] is not None for r in presets.values())
    assert capsys.readouterr().out.count("note: cannot write the preset cache") == 3
