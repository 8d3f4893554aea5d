"""The typed seams of the search: `LatencyPredictor` and `Proxy` type `Objective`, the CLI
talks to a predictor only through the protocol, and failures are typed exceptions."""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping

import optuna
import pytest

import search
from latency_tables import (
    SHIPPED_DIR,
    LatencyPredictor,
    LatencyTable,
    MissingLayerError,
    load_predictor,
)
from latency_tables.layers import space_layers
from optimize import Objective
from optimize.runner import InfeasibleSearch
from proxies import Proxy
from search_space import PRESETS, ConstraintInfeasible, SearchSpace

SHIPPED = sorted(p.stem for p in SHIPPED_DIR.glob("*.csv") if p.with_suffix(".json").exists())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_table_is_a_latency_predictor(name):
    table = load_predictor(name)
    assert isinstance(table, LatencyPredictor) and isinstance(table, LatencyTable)
    record = table.provenance()
    assert record["source"] in ("measured", "derived")
    json.dumps(record)  # stored in run.json as it is
    assert name in table.provenance_note()
    table.check_coverage(SearchSpace.default())  # shipped tables cover the default space
    assert table.predict(PRESETS["fasternet_t0"]) > 0


def test_check_coverage_names_the_missing_layer_and_the_fix():
    table = LatencyTable.load(SHIPPED[0])
    space = SearchSpace.default()
    missing = space_layers(space, table.resolution)[-1].key
    rows = table.rows[table.rows["key"] != missing]
    cut = LatencyTable(rows=rows, meta=table.meta, name=table.name)
    with pytest.raises(MissingLayerError) as e:
        cut.check_coverage(space)
    msg = str(e.value)
    assert missing in msg and "python -m latency_tables" in msg and "\n" not in msg


def test_objective_is_typed_by_the_protocols():
    import latency_tables
    import proxies

    hints = typing.get_type_hints(Objective.__init__, localns={
        "LatencyPredictor": latency_tables.LatencyPredictor, "Proxy": proxies.Proxy})
    assert hints["latency"] == Mapping[str, LatencyPredictor]
    assert hints["proxy"] is Proxy


def test_infeasible_search_is_a_constraint_infeasible():
    e = InfeasibleSearch(3)
    assert isinstance(e, ConstraintInfeasible) and "constraint infeasible" in str(e)


def test_search_runs_on_a_predictor_that_is_no_table(tmp_path, monkeypatch, capsys):
    """The CLI asks a predictor only what the protocol offers: a test double (no rows, no
    sidecar) runs a whole search, and a preset it cannot predict is reported, not fatal."""
    from test_optimize import FakeProxy, FakeTable, wobbly_accuracy

    t0 = PRESETS["fasternet_t0"]

    def ms(arch):
        if arch == t0:
            raise MissingLayerError("latency table 'fake' has no entry for T0's head")
        return 0.01 * sum(arch.widths)

    monkeypatch.setattr("latency_tables.load_predictor", lambda name: FakeTable(ms))
    monkeypatch.setattr("proxies.make_proxy", lambda name, **kwargs: FakeProxy(wobbly_accuracy))
    run_dir = tmp_path / "run"
    rc = search.main(["--device", "fake", "--trials", "2", "--budget", "smoke", "--run-dir",
                      str(run_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "latency on fake: latency table 'fake' is a test double" in out
    run = json.loads((run_dir / "run.json").read_text())
    assert run["tables"] == {"fake": {"source": "fake"}}
    study = optuna.load_study(study_name="pconv-nas", storage=f"sqlite:///{run_dir / 'study.db'}")
    presets = study.user_attrs["presets"]
    assert "no entry for T0" in presets["fasternet_t0"]["reason"]  # reported, not scored
    assert "preset fasternet_t0" not in out and "preset fasternet_t1" in out
