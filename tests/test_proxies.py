"""Proxies: ShortTrain (finite, deterministic, callbacks, failures), every registered
proxy, zero-cost speed, the CLI's error path and (slow) a tiny validation run."""

from __future__ import annotations

import math
import time

import pytest

from proxies import PROXIES, ProxyResult, ShortTrain, StopTrial, ZeroCost, load_dataset
from proxies.__main__ import main
from search_space import PRESETS, ArchConfig

SMALL = ArchConfig(widths=(8, 16, 16, 24), depths=(1, 1, 1, 1), n_divs=(2, 2, 2, 2),
                   mlp_ratios=(2, 2, 2, 2), kernel_sizes=(3, 3, 3, 3), feature_dim=32)


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist")


def test_short_train_smoke_is_finite(data):
    r = ShortTrain(dataset=data, budget="smoke", seed=0)(SMALL)
    assert isinstance(r, ProxyResult) and not r.failed and r.reason == ""
    assert 0.0 <= r.accuracy <= 1.0 and r.score == r.accuracy
    assert math.isfinite(r.tse) and r.tse > 0 and r.seconds > 0 and r.steps == 4
    assert r.checkpoints == ((4, r.accuracy),) and not r.stopped_early


def test_short_train_is_deterministic(data):
    a = ShortTrain(dataset=data, budget="smoke,steps=6", seed=3)(SMALL)
    b = ShortTrain(dataset=data, budget="smoke,steps=6", seed=3)(SMALL)
    c = ShortTrain(dataset=data, budget="smoke,steps=6", seed=4)(SMALL)
    assert (a.accuracy, a.tse) == (b.accuracy, b.tse)
    assert a.tse != c.tse


def test_callback_checkpoints_and_early_stop(data):
    seen = []
    r = ShortTrain(dataset=data, budget="smoke,steps=8,checkpoints=4", seed=0)(
        SMALL, callback=lambda step, acc: seen.append((step, acc)))
    assert [s for s, _ in seen] == [2, 4, 6, 8] and list(r.checkpoints) == seen

    stopped = ShortTrain(dataset=data, budget="smoke,steps=8,checkpoints=4", seed=0)(
        SMALL, callback=lambda step, acc: step >= 4)
    assert stopped.stopped_early and stopped.steps == 4 and not stopped.failed
    assert stopped.accuracy == seen[1][1]

    def stop(step: int, acc: float) -> None:
        raise StopTrial

    r = ShortTrain(dataset=data, budget="smoke,steps=8,checkpoints=4", seed=0)(SMALL, callback=stop)
    assert r.stopped_early and r.steps == 2


def test_other_callback_exceptions_propagate(data):
    class Pruned(Exception):
        pass

    def prune(step: int, acc: float) -> None:
        raise Pruned

    with pytest.raises(Pruned):
        ShortTrain(dataset=data, budget="smoke", seed=0)(SMALL, callback=prune)


def test_exploding_loss_returns_failed_result(data):
    r = ShortTrain(dataset=data, budget="smoke,lr=1e30,warmup=0", seed=0)(SMALL)
    assert r.failed and r.score == float("-inf") and r.accuracy is None
    assert "loss became" in r.reason or "non-finite" in r.reason


def test_unrunnable_network_returns_failed_result(data):
    r = ShortTrain(dataset=data, budget="smoke,resolution=8", seed=0)(SMALL)
    assert r.failed and r.reason.startswith("step 1:")


@pytest.mark.parametrize("name", list(PROXIES))
def test_every_proxy_gives_a_finite_score(data, name):
    r = PROXIES[name](dataset=data, budget="smoke", seed=0)(SMALL)
    assert r.proxy == name and not r.failed and math.isfinite(r.score), r.reason


@pytest.mark.parametrize("name", ["synflow", "naswot", "grad_norm", "snip", "params", "flops"])
def test_zero_cost_under_5s_on_t0(data, name):
    proxy = ZeroCost(name, dataset=data, budget="quick", seed=0)
    start = time.perf_counter()
    r = proxy(PRESETS["fasternet_t0"])
    assert time.perf_counter() - start < 5.0 and not r.failed
    assert proxy(PRESETS["fasternet_t0"]).score == r.score  # deterministic


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown zero-cost proxy"):
        ZeroCost("jacob", dataset="fashion-mnist")


@pytest.mark.parametrize("argv, match", [
    (["validate", "--dataset", "nope"], "unknown dataset"),
    (["validate", "--budget", "fast"], "unknown level"),
    (["validate", "--proxies", "snip,foo"], "unknown proxy 'foo'"),
    (["validate", "--reference", "quick,steps=100"], "at least 10x"),
    (["validate", "--n", "2"], "at least 3"),
])
def test_cli_errors_exit_2_with_one_line(capsys, argv, match, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err


@pytest.mark.slow
def test_validate_tiny_run_writes_report(tmp_path):
    from proxies.validate import validate, write_report

    report = validate(n=3, seed=0, budget="smoke", reference="smoke,steps=40",
                      proxies=["short_train", "tse", "params"], out_dir=tmp_path)
    assert list(report.table["proxy"]) == ["short_train", "tse", "params"]
    assert report.table["kendall_tau"].between(-1, 1).all() and len(report.rows) == 3
    paths = write_report(report, tmp_path)
    assert all(p.is_file() for p in paths)
    again = validate(n=3, seed=0, budget="smoke", reference="smoke,steps=40",
                     proxies=["short_train", "tse", "params"], out_dir=tmp_path)
    assert again.settings["resumed_rows"] == 3
    assert again.rows["reference"].tolist() == report.rows["reference"].tolist()
