"""The learned accuracy estimate: the fit recovers a known relation and states its error,
the model round-trips, the proxy refuses what it was not fitted for, and the design rows
never contain a holdout architecture."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from proxies import Budget, load_dataset
from proxies.estimate import FEATURES, Estimate, EstimateError, EstimateModel, fit
from search_space import ArchConfig

SMALL = ArchConfig(widths=(8, 16, 16, 24), depths=(1, 1, 1, 1), n_divs=(2, 2, 2, 2),
                   mlp_ratios=(2, 2, 2, 2), kernel_sizes=(3, 3, 3, 3), feature_dim=32)


def _rows(n: int, noise: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {f: float(rng.normal()) for f in FEATURES}
        row["arch_id"] = f"a{i}"
        row["reference"] = 90 + 1.5 * row["log_params"] + 0.8 * row["quick_acc"] + noise * float(
            rng.normal())
        rows.append(row)
    return rows


def test_fit_finds_the_informative_features_and_predicts_unseen_rows():
    model = fit(_rows(30, 0.05), dataset="fashion-mnist", budget=Budget.parse("quick"), seed=0,
                protocol="p", source="synthetic")
    assert {"quick_acc", "log_params"} <= set(model.features)
    assert model.loo_rmse < 0.3 and model.loo_tau > 0.8
    test = _rows(20, 0.0, seed=1)
    pred = np.array([model.predict(r)[0] for r in test])
    truth = np.array([r["reference"] for r in test])
    assert np.sqrt(np.mean((pred - truth) ** 2)) < 0.5
    # The stated error is at least the leave-one-out residual, and finite.
    se = [model.predict(r)[1] for r in test]
    assert all(math.isfinite(s) and s >= model.loo_rmse for s in se)


def test_the_targets_seed_noise_is_taken_out_of_the_stated_error():
    # Targets are means of 1 or 2 noisy runs (std 0.5) of a linear truth: the leave-one-out
    # error is mostly that noise; told of it, the model states the error of the true mean.
    rows = _rows(40, 0.0)
    rng = np.random.default_rng(3)
    for i, r in enumerate(rows):
        r["n_seeds"] = 1 + i % 2
        r["reference"] += 0.5 * float(rng.normal()) / math.sqrt(r["n_seeds"])
    kw = dict(dataset="d", budget=Budget(), seed=0, protocol="p", source="s")
    told, blind = fit(rows, target_noise=0.5, **kw), fit(rows, **kw)
    assert blind.residual == pytest.approx(blind.loo_rmse)
    assert told.loo_rmse == blind.loo_rmse and told.residual < 0.7 * told.loo_rmse
    assert told.residual ** 2 == pytest.approx(
        max(told.loo_rmse ** 2 - 0.25 * np.mean([1, 0.5]), 0.0))
    test = _rows(20, 0.0, seed=1)
    truth = np.array([r["reference"] for r in test])
    err = np.sqrt(np.mean((np.array([told.predict(r)[0] for r in test]) - truth) ** 2))
    assert err < told.loo_rmse  # the true error is below the noisy leave-one-out one
    assert told.predict(test[0])[1] < blind.predict(test[0])[1]
    assert "without the reference's seed noise" in told.provenance


def test_pure_noise_gives_a_large_stated_error():
    rows = _rows(20, 0.0)
    rng = np.random.default_rng(5)
    for r in rows:
        r["reference"] = 90 + float(rng.normal())
    model = fit(rows, dataset="fashion-mnist", budget=Budget.parse("quick"), seed=0,
                protocol="p", source="synthetic")
    assert model.loo_rmse > 0.7  # nothing to learn: the error says so


def test_too_few_rows_and_non_finite_features():
    with pytest.raises(EstimateError, match="at least 5"):
        fit(_rows(4, 0.1), dataset="d", budget=Budget(), seed=0, protocol="p", source="s")
    model = fit(_rows(12, 0.1), dataset="d", budget=Budget(), seed=0, protocol="p", source="s")
    row = _rows(1, 0.0)[0]
    row[model.features[0]] = math.nan
    assert all(math.isnan(v) for v in model.predict(row))


def test_model_round_trips(tmp_path):
    model = fit(_rows(12, 0.1), dataset="d", budget=Budget(), seed=0, protocol="p", source="s")
    path = model.save(tmp_path / "m.json")
    back = EstimateModel.from_dict(__import__("json").loads(path.read_text()))
    row = _rows(1, 0.0, seed=3)[0]
    assert back.predict(row) == model.predict(row)
    assert back == model


def test_proxy_refuses_another_budget_or_dataset(toy_estimate):
    data = load_dataset("fashion-mnist")
    model = toy_estimate("smoke")
    with pytest.raises(EstimateError, match="cannot score budget"):
        Estimate(dataset=data, budget="quick", model=model)
    assert Estimate(dataset=data, budget="smoke", seed=1, model=model).seed == 1
    other = dataclasses.replace(model, dataset="cifar10")
    with pytest.raises(EstimateError, match="fitted on 'cifar10'"):
        Estimate(dataset=data, budget="smoke", model=other)


def test_missing_model_names_the_fit_command(tmp_path, monkeypatch):
    import proxies.estimate as est

    monkeypatch.setattr(est, "ESTIMATES", tmp_path)
    with pytest.raises(EstimateError, match="python -m proxies estimate fit"):
        EstimateModel.load("fashion-mnist")


def test_proxy_scores_with_uncertainty(toy_estimate):
    r = Estimate(dataset=load_dataset("fashion-mnist"), budget="smoke",
                 model=toy_estimate("smoke"))(SMALL)
    assert r.proxy == "estimate" and not r.failed
    assert r.score == r.accuracy and math.isfinite(r.score)
    assert r.uncertainty is not None and r.uncertainty > 0


def test_design_rows_hold_no_holdout_architecture():
    from proxies.estimate_fit import design_rows
    from proxies.reference import ReferenceSet, folder_of

    rows, pid, source = design_rows("fashion-mnist", with_sets=["pilot"])
    rset = ReferenceSet.load(folder_of("fashion-mnist"))
    holdout = {m.arch_id for m in rset.members if m.split == "holdout"}
    assert len(rows) >= 5 and not set(rows["arch_id"]) & holdout
    assert rows["reference"].between(10, 100).all()  # percent
    assert "tune" in source and pid == rset.protocols[0].protocol_id


# ---------------------------------------------------------------- in the search
def test_auto_proxy_resolves_to_the_estimate_only_where_it_applies(tmp_path, monkeypatch):
    import proxies.estimate as est
    from optimize.cli import UsageError, _resolve_proxy
    from optimize.config import SearchConfig

    model = fit(_rows(12, 0.1), dataset="fashion-mnist", budget=Budget.parse("quick"), seed=0,
                protocol="p", source="s")
    model.save(tmp_path / "fashion-mnist.json")
    monkeypatch.setattr(est, "ESTIMATES", tmp_path)
    name, why = _resolve_proxy(SearchConfig(device="arm"))
    assert name == "estimate" and why.startswith("estimate: predicted p accuracy")
    name, why = _resolve_proxy(SearchConfig(device="arm", budget="smoke"))
    assert name == "short_train" and "cannot score budget" in why
    name, why = _resolve_proxy(SearchConfig(device="arm", promote="quick,full"))
    assert name == "short_train" and "--promote" in why
    assert _resolve_proxy(SearchConfig(device="arm", proxy="tse"))[0] == "tse"
    with pytest.raises(UsageError, match="--proxy estimate: .*cannot score budget"):
        _resolve_proxy(SearchConfig(device="arm", proxy="estimate", budget="smoke"))
    monkeypatch.setattr(est, "ESTIMATES", tmp_path / "none")
    name, why = _resolve_proxy(SearchConfig(device="arm"))
    assert name == "short_train" and "no fitted accuracy estimate" in why


def test_estimate_with_promotion_is_a_configuration_error():
    from optimize.config import SearchConfig, SearchConfigError

    with pytest.raises(SearchConfigError, match="--proxy estimate scores the one budget"):
        SearchConfig(device="arm", proxy="estimate", promote="quick,full")


def test_front_uses_the_stated_error_over_the_binomial_one():
    from optimize.report import Candidate, accuracy_error

    base = dict(name="t", number=0, state="complete", arch=None, latency_ms={"arm": 1.0},
                params_m=1.0, fidelity="quick")
    assert accuracy_error(Candidate(**base, accuracy=0.9, accuracy_se=0.005)) == 0.005
    binomial = accuracy_error(Candidate(**base, accuracy=0.9))
    assert binomial == pytest.approx(math.sqrt(0.9 * 0.1 / Budget.parse("quick").val_size))


def test_from_an_earlier_run_equals_a_fresh_call(toy_estimate):
    from proxies import ShortTrain

    data = load_dataset("fashion-mnist")
    est = Estimate(dataset=data, budget="smoke", model=toy_estimate("smoke"))
    fresh = est(SMALL)
    reused = est.from_run(SMALL, ShortTrain(dataset=data, budget="smoke", seed=0)(SMALL))
    assert (fresh.score, fresh.uncertainty) == (reused.score, reused.uncertainty)
