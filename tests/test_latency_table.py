"""Shipped latency tables: every preset predicted, broken down and covered (or a clear error)."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latency_tables import SHIPPED_DIR, LatencyTable, MissingLayerError, TableNotFoundError, available
from latency_tables.layers import LAYER_KEY_VERSION, arch_layers, space_layers
from latency_tables.table import TableVersionError
from search_space import PRESETS, SearchSpace, build_model, fuse

SHIPPED = sorted(p.stem for p in SHIPPED_DIR.glob("*.csv") if p.with_suffix(".json").exists())


def test_a_table_ships():
    assert SHIPPED, "no table in latency_tables/tables/"
    assert any(LatencyTable.load(n).source == "measured" for n in SHIPPED)
    assert set(SHIPPED) <= set(available())


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_predict_breakdown_covers(name, preset):
    table = LatencyTable.load(name)
    arch = PRESETS[preset]
    in_space = SearchSpace.default().contains(arch)
    if not table.covers(arch):
        assert not in_space, f"{name} must cover {preset}, which is in the default space"
        with pytest.raises(MissingLayerError):
            table.predict(arch)
        return
    ms = table.predict(arch)
    assert math.isfinite(ms) and ms > 0
    rows = table.breakdown(arch)
    assert list(rows["module"]) == [m for m, _ in arch_layers(arch, table.resolution)]
    assert rows["ms"].sum() == pytest.approx(table.raw_ms(arch))
    assert ms == pytest.approx((table.scale * table.raw_ms(arch) + table.offset_ms) / table.batch)
    assert table.predict_throughput(arch) == pytest.approx(1000 / ms)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_table_provenance(name):
    table = LatencyTable.load(name)
    assert table.source in ("measured", "derived")
    assert table.meta["device"]["torch"] and table.meta["device"]["cpu_model"]
    assert name in table.describe() and table.source in table.describe()
    keys = {s.key for s in space_layers(SearchSpace.default(), table.resolution)}
    assert keys <= set(table.rows["key"]), "shipped table misses layers of the default space"


@pytest.mark.parametrize("name", SHIPPED)
def test_missing_layer_names_layer_and_command(name):
    table = LatencyTable.load(name)
    arch = PRESETS["fasternet_t0"].replace(widths=(40, 80, 160, 1000))
    with pytest.raises(MissingLayerError) as err:
        table.predict(arch)
    msg = str(err.value)
    assert "stages.3.downsample" in msg and "merge:r14:c160-1000:m2" in msg
    assert f"`{table.rebuild_command(resolution=224)}`" in msg
    if table.source == "derived":  # re-derived anywhere: a build here would time this machine
        assert f"python -m latency_tables calibrate --device {name} --space " in msg
        assert "build" not in msg and "any machine" in msg
    else:  # measured again on its device, with its protocol
        assert f"python -m latency_tables build --device {name} --space " in msg
        assert f"--batch {table.batch}" in msg and f"--target {table.meta['target']}" in msg
        assert table.meta["device"]["cpu_model"] in msg
    assert not table.covers(arch)
    with pytest.raises(MissingLayerError):
        table.predict(PRESETS["fasternet_t0"], resolution=96)


def test_unknown_table_lists_known():
    with pytest.raises(TableNotFoundError, match="known: "):
        LatencyTable.load("no-such-device")


def test_cli_unknown_table_exit_2():
    r = subprocess.run([sys.executable, "-m", "latency_tables", "show", "--device", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_space_layers_cover_sampled_archs():
    import numpy as np

    space = SearchSpace.default()
    keys = {s.key for s in space_layers(space)}
    rng = np.random.default_rng(0)
    for _ in range(30):
        arch = space.sample(rng)
        assert {s.key for _, s in arch_layers(arch)} <= keys


def test_layer_names_are_fused_modules():
    arch = PRESETS["fasternet_t0"]
    names = dict(fuse(build_model(arch).eval()).named_modules())
    assert all(m in names for m, _ in arch_layers(arch))


def test_auto_prefers_this_gpus_table(tmp_path, monkeypatch):
    import shutil

    import latency_tables.table as table_module

    names = {"cpu": "some-cpu", "cuda": "nvidia-h100-80gb-hbm3"}
    monkeypatch.setattr(table_module, "default_device_name", lambda target="cpu": names[target])
    monkeypatch.setenv("PCONV_NAS_TABLES", str(tmp_path))
    for stem in names.values():
        for suffix in (".csv", ".json"):
            shutil.copy(SHIPPED_DIR / f"amd-epyc{suffix}", tmp_path / f"{stem}{suffix}")
    monkeypatch.setattr(table_module.torch.cuda, "is_available", lambda: False)
    assert LatencyTable.load("auto").name == "some-cpu"
    monkeypatch.setattr(table_module.torch.cuda, "is_available", lambda: True)
    assert LatencyTable.load("auto").name == "nvidia-h100-80gb-hbm3"
    (tmp_path / "nvidia-h100-80gb-hbm3.csv").unlink()  # no GPU table built yet: the CPU's
    assert LatencyTable.load("auto").name == "some-cpu"


class _Reached(Exception):
    """Raised by the stand-in for the work a suggested command starts."""


@pytest.mark.parametrize("name", SHIPPED)
def test_suggested_command_starts_the_right_work(name, monkeypatch):
    """The command a missing layer suggests parses, and derives (derived table) or measures
    (measured table, its protocol) the table for the given space and resolution."""
    import latency_tables.__main__ as cli
    import latency_tables._derive_cli as derive_cli

    calls: dict[str, tuple] = {}

    def stand_in(kind: str):
        def work(*args, **kwargs):
            calls[kind] = (args, kwargs)
            raise _Reached
        return work

    monkeypatch.setattr(derive_cli, "calibrate_published", stand_in("derive"))
    monkeypatch.setattr("latency_tables.here.build_table", stand_in("measure"))
    table = LatencyTable.load(name)
    space = SearchSpace.default().source
    argv = shlex.split(table.rebuild_command(space, resolution=96))
    assert argv[:3] == ["python", "-m", "latency_tables"]
    with pytest.raises(_Reached):
        cli.main(argv[3:])
    [(kind, (args, kwargs))] = calls.items()
    assert kind == ("derive" if table.source == "derived" else "measure")
    assert args[0] == name and kwargs["resolution"] == 96
    assert Path((kwargs.get("space") or args[1]).source) == Path(space)
    if kind == "measure":
        proto = kwargs["proto"]
        assert (proto.target, proto.batch, proto.threads) == (
            table.meta["target"], table.batch, table.meta["threads"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_tables_have_this_key_version(name):
    """The shipped sidecars predate the field: absent means version 1, today's format."""
    assert LatencyTable.load(name).meta.get("layer_key_version", 1) == LAYER_KEY_VERSION


@pytest.mark.parametrize("name", SHIPPED)
def test_table_of_another_key_version_names_its_rebuild(name, tmp_path, monkeypatch):
    """A table of another layer-key version fails on load, in one line naming both versions
    and the command that rebuilds it: derive (derived table) or measure (measured table)."""
    import latency_tables.__main__ as cli
    import latency_tables._derive_cli as derive_cli

    meta = json.loads((SHIPPED_DIR / f"{name}.json").read_text())
    meta.update(layer_key_version=LAYER_KEY_VERSION + 1, space=SearchSpace.default().source)
    shutil.copy(SHIPPED_DIR / f"{name}.csv", tmp_path / f"{name}.csv")
    (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    with pytest.raises(TableVersionError) as excinfo:
        LatencyTable.load(tmp_path / f"{name}.csv")
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"version {LAYER_KEY_VERSION + 1}" in message and f"version {LAYER_KEY_VERSION}" in message
    command = message.split("`")[1]
    calls: list[str] = []

    def stand_in(kind: str):
        def work(*args, **kwargs):
            calls.append(kind)
            raise _Reached
        return work

    monkeypatch.setattr(derive_cli, "calibrate_published", stand_in("derive"))
    monkeypatch.setattr("latency_tables.here.build_table", stand_in("measure"))
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "latency_tables"] and name in argv
    with pytest.raises(_Reached):
        cli.main(argv[3:])
    assert calls == ["derive" if meta["source"] == "derived" else "measure"]


def test_calibrate_resolution_is_for_derived_tables(capsys):
    from latency_tables.__main__ import main

    measured = next(n for n in SHIPPED if LatencyTable.load(n).source == "measured")
    assert main(["calibrate", "--device", measured, "--resolution", "96"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resolution") and "\n" not in err
