"""A table is trusted only where it was measured (issue 23): fingerprints, probe networks
timed here against the table's predictions (a fake timer: no network is timed except in the
one slow test), the cache, the search refusing or calibrating before any trial, and the
`verify`/`predict` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import search
from latency_tables import SHIPPED_DIR, LatencyTable
from latency_tables import trust as trust_module
from latency_tables.__main__ import main as lt_main
from latency_tables.fingerprint import (
    compare,
    hardware_id,
    isa_flags,
    local_table_name,
    machine_fingerprint,
    table_fingerprint,
)
from latency_tables.trust import (
    PROBES,
    TrustError,
    another_machine,
    build_command,
    calibrated,
    probe_archs,
    record_probes,
    refusal,
    time_probes,
    verify,
)
from search_space import PRESETS

EPYC = "amd-epyc"
X86 = "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_tile ht\n"
ARM = "Features\t: fp asimd evtstrm aes asimddp sve i8mm\n"
#: This machine as a 2-vCPU slice with 8 MiB of L3 (the machine of issue 23).
SMALL_L3 = {"cpu_model": "AMD EPYC", "machine": "x86_64", "isa": ["avx2", "avx512f"],
            "caches_bytes": {"L1d": 32768, "L2": 524288, "L3": 8 << 20}, "logical_cpus": 2,
            "torch": "2.14.1+cu130", "runtime": "eager", "runtime_version": "2.14.1+cu130"}


class FakeTimer:
    """Times probes as the table predicts them times `factor` (one per probe, or one for all);
    counts its calls."""

    def __init__(self, factor: float | list[float]) -> None:
        self.factor, self.calls = factor, 0

    def __call__(self, archs, table) -> list[float]:
        self.calls += 1
        f = self.factor if isinstance(self.factor, list) else [self.factor] * len(archs)
        return [table.predict(a) * k for a, k in zip(archs, f)]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh verification cache, and no blanket trust (the suite's conftest sets it)."""
    where = tmp_path / "verify-cache"
    monkeypatch.setenv("PCONV_NAS_VERIFY_CACHE", str(where))
    monkeypatch.delenv("PCONV_NAS_TRUST_TABLES", raising=False)
    # the shipped table's CPU model is this machine's, whatever machine runs the suite (on
    # another it would be that machine's table, not timed: test_a_table_of_another_machine...)
    monkeypatch.setattr(trust_module, "another_machine", lambda table, here=None: None)
    return where


@pytest.fixture
def epyc() -> LatencyTable:
    return LatencyTable.load(EPYC)


@pytest.fixture
def copy(tmp_path) -> LatencyTable:
    """A writable copy of the shipped measured table."""
    for suffix in (".csv", ".json"):
        shutil.copy(SHIPPED_DIR / f"{EPYC}{suffix}", tmp_path / f"{EPYC}{suffix}")
    return LatencyTable.load(tmp_path / f"{EPYC}.csv")


def fake_timer(monkeypatch, factor: float | list[float]) -> FakeTimer:
    """The search's and the CLI's probe timer replaced (the seam: `trust.PROBE_TIMERS`)."""
    timer = FakeTimer(factor)
    monkeypatch.setitem(trust_module.PROBE_TIMERS, "eager", timer)
    return timer


# ---------------------------------------------------------------------------- fingerprint
def test_fingerprint_has_what_decides_a_kernels_speed():
    fp = machine_fingerprint()
    for key in ("cpu_model", "machine", "isa", "caches_bytes", "logical_cpus", "torch", "runtime",
                "runtime_version"):
        assert key in fp, key
    assert fp["runtime"] == "eager" and fp["runtime_version"] == fp["torch"]
    assert json.loads(json.dumps(fp)) == fp
    assert isa_flags(X86) == ["amx_tile", "avx", "avx2", "avx512_bf16", "avx512f", "fma", "sse4_2"]
    assert isa_flags(ARM) == ["asimd", "asimddp", "i8mm", "sve"]
    assert isa_flags("") == []


def test_compare_says_what_differs_in_words():
    table = {**SMALL_L3, "caches_bytes": {**SMALL_L3["caches_bytes"], "L3": 32 << 20},
             "isa": ["avx2", "avx512_bf16", "avx512f"], "torch": "2.5.0"}
    diffs = compare(table, SMALL_L3)
    assert "L3 cache 32 MiB in the table, 8 MiB here" in diffs
    assert "ISA: avx512_bf16 in the table, not here" in diffs
    assert "torch 2.5.0 in the table, 2.14.1+cu130 here" in diffs
    assert compare(SMALL_L3, SMALL_L3) == []
    assert compare({"cpu_model": "AMD EPYC"}, SMALL_L3) == []  # only fields both record


def test_a_table_built_before_fingerprints_is_read_from_its_device_record(epyc):
    fp = table_fingerprint(epyc.meta)
    assert fp["cpu_model"] == "AMD EPYC" and fp["caches_bytes"]["L3"] == 32 << 20
    assert fp["runtime"] == "eager" and fp["runtime_version"] == epyc.meta["device"]["torch"]
    assert "isa" not in fp  # not recorded then: not compared
    assert table_fingerprint({"fingerprint": SMALL_L3}) == SMALL_L3


def test_hardware_id_names_the_hardware_not_the_versions():
    assert hardware_id(SMALL_L3) == hardware_id({**SMALL_L3, "torch": "9.9"})
    assert hardware_id(SMALL_L3) != hardware_id({**SMALL_L3, "caches_bytes": {"L3": 32 << 20}})
    assert local_table_name().endswith("-" + hardware_id())


def test_auto_prefers_the_table_named_after_this_machines_hardware(tmp_path, monkeypatch):
    import latency_tables.table as table_module

    monkeypatch.setattr(table_module, "default_device_name", lambda target="cpu": EPYC)
    monkeypatch.setattr(table_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PCONV_NAS_TABLES", str(tmp_path))
    assert LatencyTable.load("auto").name == EPYC  # the plain name: the shipped table
    local = f"{EPYC}-{hardware_id()}"
    for suffix in (".csv", ".json"):
        shutil.copy(SHIPPED_DIR / f"{EPYC}{suffix}", tmp_path / f"{local}{suffix}")
    assert LatencyTable.load("auto").name == local


# ---------------------------------------------------------------------------- verify
def test_probes_are_covered_by_the_shipped_measured_table(epyc):
    assert probe_archs(epyc) == list(PROBES)
    assert PROBES[0] == PRESETS["fasternet_t0"]
    assert len({a.arch_id for a in PROBES}) == len(PROBES)


def test_within_ten_percent_is_verified(epyc):
    v = verify(epyc, timer=FakeTimer([1.05, 0.97, 1.02]))
    assert v.verified and v.ratio == pytest.approx(1.02)
    assert v.worst_pct == pytest.approx(5.0)
    assert v.summary().startswith("verified on this machine (3 probes within 5.0 %, ")


def test_outside_ten_percent_names_the_ratio_and_how_the_machines_differ(epyc, monkeypatch):
    monkeypatch.setattr(trust_module, "machine_fingerprint", lambda *a, **k: dict(SMALL_L3))
    v = verify(epyc, timer=FakeTimer([2.0, 2.2, 2.1]))
    assert not v.verified and v.ratio == pytest.approx(2.1)
    assert "x2.10 the table's prediction here (x2.00-x2.20" in v.summary()
    assert "L3 cache 32 MiB in the table, 8 MiB here" in v.summary()


def test_a_table_verified_by_its_probes_time_at_build(copy, tmp_path):
    """With times at build: every probe within 10 % of it (the machine), the median within 10 %
    of the predictions (the table); one probe the table mispredicts on its own machine fails
    neither."""
    record_probes(copy, timer=FakeTimer([1.0, 1.12, 0.97]))  # the small probe off at build
    table = LatencyTable.load(tmp_path / f"{EPYC}.csv")
    v = verify(table, timer=FakeTimer([1.03, 1.12 * 1.03, 0.97 * 1.03]))
    assert v.verified and v.machine_worst_pct == pytest.approx(3.0, abs=0.01)
    assert v.summary().startswith("verified on this machine (3 probes within 3.0 % of their time "
                                  "at build, x1.03 the table's predictions in the median, worst 15.4 %")
    moved = verify(table, timer=FakeTimer([1.0, 1.12 * 1.15, 0.97]), again=True)  # one probe moved
    assert not moved.verified and moved.ratio == pytest.approx(1.0)
    assert ("x1.00 the table's prediction here" in moved.summary() and "this machine runs them "
            "x1.00 their time at build (x1.00-x1.15; outside +-10 %)" in moved.summary())
    record_probes(table, timer=FakeTimer(1.12))  # the table off on its own machine, in the median
    table = LatencyTable.load(tmp_path / f"{EPYC}.csv")
    off = verify(table, timer=FakeTimer([1.12, 1.12 * 1.05, 1.12]))
    assert not off.verified and off.machine_worst_pct == pytest.approx(5.0, abs=0.01)
    assert "x1.12 the table's prediction here" in off.summary()
    assert "the table is off on its own machine too" in off.summary()


def test_every_probe_must_be_within(epyc):
    v = verify(epyc, timer=FakeTimer([1.0, 1.0, 1.15]))  # the median is 1.0, one probe is off
    assert v.ratio == pytest.approx(1.0) and not v.verified


def test_build_time_probes_separate_the_machine_from_the_table(copy, tmp_path):
    record_probes(copy, timer=FakeTimer(1.0))  # the table's own machine: as predicted
    meta = json.loads((tmp_path / f"{EPYC}.json").read_text())
    assert meta["probes"]["arch_ids"] == [a.arch_id for a in PROBES]
    table = LatencyTable.load(tmp_path / f"{EPYC}.csv")
    v = verify(table, timer=FakeTimer(1.5))
    assert v.machine_ratio == pytest.approx(1.5)
    assert "this machine runs them x1.50 their time at build" in v.summary()
    assert [p.built_ms for p in v.probes] == pytest.approx([table.predict(a) for a in PROBES],
                                                           rel=1e-4)
    record_probes(table, timer=FakeTimer(1.3))  # the table was off on its own machine
    table = LatencyTable.load(tmp_path / f"{EPYC}.csv")
    v = verify(table, timer=FakeTimer(1.3))
    assert v.machine_ratio == pytest.approx(1.0, rel=1e-3)
    assert "the table is off on its own machine too (x1.30 at build)" in v.summary()


def test_the_cache_spares_the_timing_until_the_table_or_the_machine_changes(copy, tmp_path,
                                                                           monkeypatch, cache):
    timer = FakeTimer(1.02)
    first = verify(copy, timer=timer)
    again = verify(copy, timer=timer)
    assert timer.calls == 1 and again.cached and not first.cached
    assert again.ratio == pytest.approx(first.ratio) and again.date == first.date
    assert len(list(cache.glob(f"{EPYC}-*.json"))) == 1
    verify(copy, timer=timer, again=True)  # asked to re-time
    assert timer.calls == 2
    (path,) = cache.glob(f"{EPYC}-*.json")  # an hour later: the machine may have moved
    old = json.loads(path.read_text())
    path.write_text(json.dumps({**old, "date": "2026-01-01T00:00:00+00:00"}))
    assert not verify(copy, timer=timer).cached and timer.calls == 3
    assert verify(copy, timer=timer).cached and timer.calls == 3
    changed = LatencyTable(rows=copy.rows, meta={**copy.meta, "correction": None}, name=EPYC)
    verify(changed, timer=timer)  # another correction: other predictions
    assert timer.calls == 4
    monkeypatch.setattr(trust_module, "machine_fingerprint", lambda *a, **k: dict(SMALL_L3))
    verify(copy, timer=timer)  # another machine
    assert timer.calls == 5


def test_what_cannot_be_verified_says_why():
    with pytest.raises(TrustError, match="derived table"):
        verify(LatencyTable.load("arm"), timer=FakeTimer(1.0))
    table = LatencyTable.load(EPYC)
    unknown = LatencyTable(rows=table.rows, meta={**table.meta, "runtime": "tensorrt"}, name="y")
    with pytest.raises(TrustError, match="tensorrt table"):
        verify(unknown)


def test_a_build_records_the_fingerprint_and_the_probes(tmp_path, monkeypatch, capsys):
    from latency_tables import Timing, build_table
    from search_space import SearchSpace

    space = SearchSpace.from_dict({"stages": 2, "widths": [[16], [32]], "depths": [[1], [1]],
                                   "n_divs": [4], "mlp_ratios": [2], "kernel_sizes": [3],
                                   "act": ["relu"], "feature_dim": [64]}, source="tiny")
    path = build_table("tiny", space, resolution=32, sweeps=1, out_dir=tmp_path / "tiny",
                       timer=lambda sig, proto: Timing(1.0, 0.0, 1.0, 10))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["fingerprint"] == machine_fingerprint()

    def shipped_copy(name, *args, out_dir, **kwargs):  # the build itself: the shipped table
        for suffix in (".csv", ".json"):
            shutil.copy(SHIPPED_DIR / f"{EPYC}{suffix}", Path(out_dir) / f"{name}{suffix}")
        return Path(out_dir) / f"{name}.csv"

    monkeypatch.setattr("latency_tables.here.build_table", shipped_copy)
    fake_timer(monkeypatch, 1.0)
    assert lt_main(["build", "--device", "here", "--out", str(tmp_path), "--calibrate", "0"]) == 0
    probes = json.loads((tmp_path / "here.json").read_text())["probes"]
    assert probes["arch_ids"] == [a.arch_id for a in PROBES] and probes["rounds"] == 2
    assert probes["measured_ms"] == pytest.approx(probes["predicted_ms"], rel=1e-4)
    assert "probes (timed whole, 2 rounds" in capsys.readouterr().out


def test_calibration_rescales_every_prediction_and_says_so(epyc):
    v = verify(epyc, timer=FakeTimer([1.5, 1.53, 1.6]))
    cal = calibrated(epyc, v)
    arch = PRESETS["fasternet_t1"]
    assert cal.predict(arch) == pytest.approx(1.53 * epyc.predict(arch))
    note = cal.provenance_note()
    assert "calibrated from AMD EPYC by 3 probes (x1.53, probes x1.50-x1.60)" in note
    assert "calibrated here x1.53" in cal.describe()
    assert epyc.predict(arch) == LatencyTable.load(EPYC).predict(arch)  # the original untouched


# ---------------------------------------------------------------------------- the search
def _search(tmp_path: Path, *extra: str) -> list[str]:
    return ["--device", EPYC, "--trials", "2", "--budget", "smoke", "--workers", "1",
            "--run-dir", str(tmp_path / "run"), *extra]


@pytest.fixture
def fake_proxy(monkeypatch):
    from test_optimize import FakeProxy, wobbly_accuracy

    monkeypatch.setattr("proxies.make_proxy", lambda name, **kwargs: FakeProxy(wobbly_accuracy))


def test_search_refuses_a_foreign_table_in_one_line_before_any_trial(tmp_path, monkeypatch,
                                                                     capsys, epyc):
    from test_search_cli import assert_one_line_error

    timer = fake_timer(monkeypatch, 2.1)
    monkeypatch.setattr("proxies.make_proxy", lambda *a, **k: pytest.fail("no proxy before the check"))
    rc = search.main(_search(tmp_path))
    out, err = capsys.readouterr()
    assert_one_line_error(rc, err, f"latency table '{EPYC}'", "x2.10 the table's prediction",
                          f"python -m latency_tables build --device {local_table_name()} "
                          "--budget-minutes 6", "about 7 min", "--calibrate-latency")
    assert timer.calls == 1 and "timing 3 probe networks" in out
    assert not (tmp_path / "run").exists()
    assert refusal(epyc, verify(epyc)) in err  # the cached result: no second timing
    assert timer.calls == 1


@pytest.mark.parametrize("here_factor", [1.01, 1.5])
def test_search_calibrates_by_measuring_this_machine_when_asked(tmp_path, monkeypatch, capsys,
                                                              fake_proxy, epyc, here_factor):
    """--calibrate-latency: this machine's table, a 1-minute budgeted build (its result stands
    in here: the shipped rows doubled), used and labelled (verified by its probes, or, where it
    misses them, said so), and kept: the next search finds it instead of building again."""
    import latency_tables.here as here_module

    monkeypatch.setenv("PCONV_NAS_TABLES", str(tmp_path / "tables"))
    monkeypatch.setitem(trust_module.PROBE_TIMERS, "eager", lambda archs, table: [
        table.predict(a) * (2.0 if table.name == EPYC else here_factor) for a in archs])
    builds = []

    def fake_build(name, space, *, proto, out_dir, budget_minutes, **kwargs):
        builds.append((name, budget_minutes, proto.form, proto.batch))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        epyc.rows.assign(ms=epyc.rows["ms"] * 2.0).to_csv(Path(out_dir) / f"{name}.csv", index=False)
        meta = {k: v for k, v in epyc.meta.items() if not k.startswith("_")}
        (Path(out_dir) / f"{name}.json").write_text(json.dumps(meta))
        built = LatencyTable.load(Path(out_dir) / f"{name}.csv")  # its probes, as predicted
        record_probes(built, timer=lambda archs, table: [table.predict(a) for a in archs])
        return LatencyTable.load(Path(out_dir) / f"{name}.csv")

    monkeypatch.setattr(here_module, "build_here", fake_build)
    rc = search.main(_search(tmp_path, "--calibrate-latency"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert builds == [(local_table_name(), here_module.CALIBRATE_MINUTES, "fused", 1)]
    assert f"measuring this machine's table '{local_table_name()}' in 1 min" in out
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["tables"][EPYC]["calibrated_from"]["table"] == EPYC
    assert run["config"]["calibrate_latency"] is True
    if here_factor > 1.1:  # this machine's own table misses its probes: used, and said so
        assert "WARNING: this machine's 1-min table" in out and "--budget-minutes 6" in out
        assert run["tables"][EPYC]["verification"]["status"] == "failed"
        assert "does NOT hold on this machine" in run["sources"][EPYC]
        assert "Measured here: the" in out and "worst -33.3 %" in out and "beyond +-10 %: " in out
        return
    label = f"measured here by --calibrate-latency in place of '{EPYC}'"
    assert f"latency on {EPYC}: " in out and label in out and "verified on this machine" in out
    # the front timed with the table's probes: how fast the machine ran against the build
    report = (tmp_path / "run" / "report.md").read_text()
    assert "with its 3 probes" in out and "the table's probes, timed with them, ran x1.01" in report
    assert run["tables"][EPYC]["verification"]["status"] == "verified"
    assert label in run["sources"][EPYC] and "WARNING" not in out
    import optuna

    study = optuna.load_study(study_name="pconv-nas",
                              storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    preset = study.user_attrs["presets"]["fasternet_t0"]["latency_ms"][EPYC]
    built = LatencyTable.load(tmp_path / "tables" / f"{local_table_name()}.csv")
    assert preset == pytest.approx(built.predict(PRESETS["fasternet_t0"]))
    assert preset > 1.9 * epyc.predict(PRESETS["fasternet_t0"])
    # the next search finds this machine's table: no second build
    rc = search.main(_search(tmp_path / "again", "--calibrate-latency"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert len(builds) == 1 and f"this machine's table '{local_table_name()}'" in out


def test_search_says_verified_on_this_machine(tmp_path, monkeypatch, capsys, fake_proxy):
    timer = fake_timer(monkeypatch, 1.03)
    rc = search.main(_search(tmp_path))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "verified on this machine (3 probes within 3.0 %" in out
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["tables"][EPYC]["verification"]["status"] == "verified"
    # the front, timed here at the end (`optimize.measured`): beside each prediction
    assert timer.calls == 2 and "front members and 3 presets on" in out
    assert "Measured here: the" in out and "worst -2.9 %" in out and "all within +-10 %" in out
    pareto = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert pareto["measured_here_ms"].to_numpy() == pytest.approx(
        1.03 * pareto[f"latency_ms_{EPYC}"].to_numpy(), rel=1e-3)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "measured here (ms)" in report and "all within +-10 %" in report
    assert search.main(["show", str(tmp_path / "run")]) == 0  # kept on the study
    assert "measured here (ms)" in capsys.readouterr().out


def test_a_table_of_another_machine_is_that_machines_not_timed(tmp_path, monkeypatch, capsys,
                                                               fake_proxy, epyc):
    """A board's table copied to a laptop: used as the board's, labelled, never timed here."""
    from latency_tables.fingerprint import machine_fingerprint

    here = machine_fingerprint("cpu")
    real = another_machine  # imported before the fixture's stand-in
    assert real(epyc, {**here, "cpu_model": epyc.meta["device"]["cpu_model"],
                       "machine": epyc.meta["device"].get("machine", here["machine"])}) is None
    assert real(epyc, {**here, "cpu_model": "Cortex-A72", "machine": "aarch64"}) == \
        f"{epyc.meta['device']['cpu_model']} ({epyc.meta['device'].get('machine', '?')})"
    timer = fake_timer(monkeypatch, 3.0)
    monkeypatch.setattr(trust_module, "another_machine",
                        lambda table, here=None: "Cortex-A72 (aarch64)")
    rc = search.main(_search(tmp_path))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert timer.calls == 0
    assert "measured on Cortex-A72 (aarch64), not on this machine" in out
    assert "the table of Cortex-A72 (aarch64), another machine than this one" in out


def test_trust_table_skips_the_check_loudly(tmp_path, monkeypatch, capsys, fake_proxy):
    timer = fake_timer(monkeypatch, 3.0)
    rc = search.main(_search(tmp_path, "--trust-table"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert timer.calls == 0
    assert f"WARNING: latency table '{EPYC}' is used WITHOUT checking it" in out
    assert "NOT VERIFIED on this machine (--trust-table)" in out
    from test_search_cli import assert_one_line_error

    rc = search.main(_search(tmp_path, "--trust-table", "--calibrate-latency"))
    assert_one_line_error(rc, capsys.readouterr().err, "--calibrate-latency", "--trust-table")


def test_a_derived_table_is_not_timed(tmp_path, monkeypatch, capsys, fake_proxy):
    timer = fake_timer(monkeypatch, 3.0)
    rc = search.main(["--device", "arm", *_search(tmp_path)[2:]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert timer.calls == 0 and "is DERIVED, not measured" in out


# ---------------------------------------------------------------------------- the commands
def test_verify_command_prints_probes_and_exits_1_outside(monkeypatch, capsys):
    fake_timer(monkeypatch, 1.01)
    assert lt_main(["verify", EPYC]) == 0
    out = capsys.readouterr().out
    assert "timing 3 probe networks" in out and PROBES[0].arch_id in out
    assert "verified on this machine (3 probes within 1.0 %" in out
    assert lt_main(["verify", EPYC]) == 0 and "[cached; --again re-times]" in capsys.readouterr().out
    fake_timer(monkeypatch, 1.4)
    assert lt_main(["verify", EPYC, "--again"]) == 1
    assert "x1.40 the table's prediction" in capsys.readouterr().out
    assert lt_main(["verify", "arm"]) == 2
    assert "derived table" in capsys.readouterr().err


def test_predict_prints_the_latency_and_its_provenance(tmp_path, monkeypatch, capsys, epyc):
    ms = epyc.predict(PRESETS["fasternet_t0"])
    assert lt_main(["predict", "--table", EPYC, "fasternet_t0"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == (f"{ms:.1f} ms per image on {EPYC} (measured on AMD EPYC, eager, 1 thread, batch 1; "
                   f"not verified here (`python -m latency_tables verify {EPYC}`))")
    fake_timer(monkeypatch, 1.02)
    verify(epyc)
    arch = tmp_path / "t0.yaml"
    PRESETS["fasternet_t0"].save(arch)
    assert lt_main(["predict", "--table", EPYC, str(arch), "--runtime", "eager"]) == 0
    assert "; verified on this machine (3 probes within 2.0 %" in capsys.readouterr().out
    assert lt_main(["predict", "--table", "arm", "fasternet_t0"]) == 0
    assert "ms per image on arm (derived for ARM Cortex-A72" in capsys.readouterr().out


def _bad_arch(tmp_path: Path) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text("embed_dim: [40, 80]\ndepths: [1, 2, 8, 2]\nwidht: 3\n")
    return str(path)


@pytest.mark.parametrize("argv, needle", [
    (lambda p: ["predict", "--table", "nope", "fasternet_t0"], "no latency table named 'nope'"),
    (lambda p: ["predict", "--table", EPYC, "nope.yaml"], "neither a preset"),
    (lambda p: ["predict", "--table", EPYC, _bad_arch(p)], "bad.yaml"),
    (lambda p: ["predict", "--table", EPYC, "--runtime", "onnxruntime", "fasternet_t0"],
     "--runtime onnxruntime: table 'amd-epyc' was measured in eager"),
    (lambda p: ["verify", "nope"], "no latency table named 'nope'"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, tmp_path, capsys):
    from test_search_cli import assert_one_line_error

    assert_one_line_error(lt_main(argv(tmp_path)), capsys.readouterr().err, needle)


def test_devices_says_runtime_and_verification_without_timing(monkeypatch, capsys, epyc):
    timer = fake_timer(monkeypatch, 1.0)
    assert search.main(["devices"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(EPYC))
    assert "eager" in line and "not verified here" in line
    verify(epyc)
    assert search.main(["devices"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(EPYC))
    assert "verified here 20" in line and timer.calls == 1


@pytest.mark.slow
def test_the_probes_time_for_real_in_a_few_seconds(epyc):
    import time

    start = time.monotonic()
    ms = time_probes(PROBES, epyc)
    assert len(ms) == 3 and all(m > 0 for m in ms)
    assert time.monotonic() - start < 60  # a few seconds on one idle core


def test_a_runtime_tables_build_here_is_of_that_runtime(epyc):
    """The build a refusal names (and `--calibrate-latency` runs) for an ExecuTorch table is an
    ExecuTorch table of this machine, named as `build` names one."""
    et = LatencyTable(rows=epyc.rows, meta={**epyc.meta, "runtime": "executorch"}, name="et")
    cmd = build_command(et)
    assert f"--device {local_table_name()}-executorch " in cmd and "--runtime executorch" in cmd
    assert "--runtime" not in build_command(epyc) and f"--device {local_table_name()} " in build_command(epyc)
