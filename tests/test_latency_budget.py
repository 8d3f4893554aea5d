"""Budgeted builds: the sample's coverage, the regressors on a known cost law, the budget
honoured on a fake clock, the mixed table's provenance, extension, and a too-small budget."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from latency_tables import LatencyTable, Timing, build_table, space_layers
from latency_tables.__main__ import main as lt_main
from latency_tables.build import BudgetTooSmall
from latency_tables.regress import TERMS, fit_kind
from latency_tables.sample import required_head, sample_order
from latency_tables.validate import sample_archs
from search_space import SearchSpace

#: A known cost law: microseconds per unit of each work term (block, strided, head).
LAW = {"block": {"one": 20.0, "conv_macs": 4e-4, "gemm_macs": 1e-4, "act_gelu": 3e-3,
                 "elems": 1e-3},
       "stem": {"one": 5.0, "macs": 2e-4, "out_elems": 1e-3},
       "merge": {"one": 8.0, "macs": 1.5e-4, "in_elems": 5e-4},
       "head": {"one": 10.0, "macs": 3e-4, "pool": 1e-3, "act_gelu": 0.01}}


def law_ms(sig) -> float:
    f = TERMS[sig.kind](sig)
    return sum(c * f[k] for k, c in LAW[sig.kind].items()) / 1e3


class FakeClock:
    """Time advances only when a layer is 'measured' (`seconds_per_layer` each)."""

    def __init__(self, seconds_per_layer: float = 1.0) -> None:
        self.now, self.step, self.timed = 0.0, seconds_per_layer, []

    def __call__(self) -> float:
        return self.now

    def timer(self, sig, proto) -> Timing:
        self.now += self.step
        self.timed.append(sig.key)
        return Timing(law_ms(sig), 0.1 * law_ms(sig), law_ms(sig), 10, 2)  # IQR: 10 %


@pytest.fixture(scope="module")
def sigs():
    return space_layers(SearchSpace.default())


def test_sample_covers_kinds_and_extremes(sigs):
    order = sample_order(sigs, seed=0)
    assert sorted(s.key for s in order) == sorted(s.key for s in sigs)  # a permutation
    head = sum(required_head(sigs).values())
    first = order[:head]
    assert {s.kind for s in first} == {"stem", "merge", "block", "head"}
    blocks = [s for s in sigs if s.kind == "block"]
    early = [s for s in order[:150] if s.kind == "block"]
    for field in ("res", "cin", "n_div", "mlp_ratio", "kernel_size", "act"):
        values = {getattr(s, field) for s in blocks}
        got = {getattr(s, field) for s in early}
        assert min(values) in got and max(values) in got, field
    # not file order: the first blocks span every stage resolution
    assert len({s.res for s in early[:20]}) == len({s.res for s in blocks})


def test_sample_is_seeded(sigs):
    assert [s.key for s in sample_order(sigs, 3)] == [s.key for s in sample_order(sigs, 3)]


@pytest.mark.parametrize("kind", ["block", "merge", "stem", "head"])
def test_regressor_recovers_a_known_law(sigs, kind):
    rows = [s for s in sample_order(sigs, 0) if s.kind == kind]
    train, test = rows[: max(len(rows) // 4, 6)], rows[max(len(rows) // 4, 6):] or rows
    rng = np.random.default_rng(0)
    model = fit_kind(kind, train, [law_ms(s) * (1 + 0.001 * rng.standard_normal()) for s in train])
    pred = model.predict(test)
    truth = np.array([law_ms(s) for s in test])
    assert np.abs(pred / truth - 1).max() < 0.02
    assert model.cv_mape_pct < 1.0
    if kind in ("stem", "head"):  # 7 and 28 rows whose terms are nearly collinear (one
        return  # stride and 3 input channels; 2 feature dims): predictions only
    for term, c in LAW[kind].items():  # the constants of the law, in ms per unit
        assert model.coef[term] == pytest.approx(c / 1e3, rel=0.1), term


def test_regressor_refuses_too_few_rows(sigs):
    blocks = [s for s in sigs if s.kind == "block"][:3]
    with pytest.raises(ValueError, match="needs at least"):
        fit_kind("block", blocks, [1.0, 2.0, 3.0])


def test_budget_honoured_on_a_fake_clock(tmp_path):
    clock = FakeClock(seconds_per_layer=1.0)
    path = build_table("b", SearchSpace.default(), out_dir=tmp_path, budget_s=120, sweeps=1,
                       clock=clock, timer=clock.timer)
    assert 119 <= clock.now <= 120  # stops before a layer would end past the budget
    df = pd.read_csv(path)
    assert len(df) == 1526 and df["measured"].sum() == len(clock.timed) == 120
    assert set(df.loc[df["measured"] == 0, "key"]).isdisjoint(clock.timed)
    assert df.loc[df["measured"] == 0, "error_pct"].notna().all()  # ~0 on an exact law
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["budget"]["measured"] == 120 and set(meta["budget"]["models"]) == {
        "stem", "merge", "block", "head"}
    # the law is recovered: predicted rows within 2 % of it
    pred = df[df["measured"] == 0]
    by_key = {s.key: s for s in space_layers(SearchSpace.default())}
    err = np.array([ms / law_ms(by_key[k]) - 1 for k, ms in zip(pred["key"], pred["ms"])])
    assert np.abs(err).max() < 0.02
    # provenance says it everywhere a latency is printed
    table = LatencyTable.load(path)
    assert len(table.predicted_keys) == 1526 - 120
    share = [table.measured_share(a) for a in sample_archs(SearchSpace.default(), 20, 1)]
    assert all(0 <= x <= 1 for x in share) and 0 < np.mean(share) < 1
    for text in (table.describe(), table.provenance_note()):
        assert "8 % of layers measured (120 of 1526)" in text and "cross-validated error" in text
    # the same command again measures more (the sample's next layers) and refits
    clock2 = FakeClock(seconds_per_layer=1.0)
    build_table("b", SearchSpace.default(), out_dir=tmp_path, budget_s=60, sweeps=1,
                clock=clock2, timer=clock2.timer)
    assert set(clock2.timed).isdisjoint(clock.timed) and len(clock2.timed) == 60
    assert pd.read_csv(path)["measured"].sum() == 180


def test_a_budget_past_one_sweep_measures_the_noisiest_layers_again(tmp_path):
    """A budget that covers every layer once spends the rest on a second sweep, the layers
    of largest spread first; the table is complete (nothing predicted) and says how many ran
    twice."""
    clock = FakeClock(seconds_per_layer=1.0)
    path = build_table("b", SearchSpace.default(), out_dir=tmp_path, budget_s=1526 + 100,
                       sweeps=2, clock=clock, timer=clock.timer)
    assert len(clock.timed) == 1626 and len(set(clock.timed)) == 1526
    again = clock.timed[1526:]
    by_key = {s.key: s for s in space_layers(SearchSpace.default())}
    noisiest = sorted(by_key, key=lambda k: -0.1 * law_ms(by_key[k]))[:100]  # the fake IQR
    assert sorted(again) == sorted(noisiest)
    df = pd.read_csv(path)
    assert len(df) == 1526 and "measured" not in df  # a measured table
    table = LatencyTable.load(path)
    assert not table.predicted_keys
    assert table.meta["budget"]["repeated"] == 100
    assert ("every layer measured within the 27.1-min budget (100 of 1526 twice, largest "
            "spread first)") in table.describe()
    assert not (tmp_path / "b.partial.csv").exists()


def test_budget_too_small(tmp_path, capsys):
    clock = FakeClock(seconds_per_layer=5.0)
    with pytest.raises(BudgetTooSmall, match="min needed here"):
        build_table("s", SearchSpace.default(), out_dir=tmp_path, budget_s=30, sweeps=1,
                    clock=clock, timer=clock.timer)
    assert not (tmp_path / "s.csv").exists()
    # below the protocol's floor: refused before measuring anything, exit 2 on the CLI
    assert lt_main(["build", "--budget-minutes", "0.01", "--out", str(tmp_path),
                    "--device", "t"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least" in err[0] and "min" in err[0]

