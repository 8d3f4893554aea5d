"""Devices are declared once (`latency_tables.devices.DEVICES`): the shipped derived tables agree
with their specs, and a new device is one `DeviceSpec` — nothing else is edited.

The toy devices below go through the real CLI (`calibrate`, `show`, `--help`), the profile
fit, the report, the table sidecar, lookup by alias and the provenance note, with tiny fake
traces standing in for the published networks (the fit itself is `test_derived`'s business).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
import yaml

import latency_tables._derive_cli as derive_cli
import latency_tables.derive as derive
from latency_tables import LatencyTable, provenance_note, resolve_alias
from latency_tables.__main__ import main
from latency_tables.cost_model import trace
from latency_tables.devices import (
    DERIVED_DEVICES,
    DEVICES,
    DeviceSpec,
    derivable_devices,
    device_spec,
    register_device,
)
from latency_tables.identifiability import identifiability
from latency_tables.profile_fit import ACTIVATION_COSTS, INITIAL
from latency_tables.published import load_networks
from search_space import SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")

PAPER = ("arm", "cpu", "gpu")


# --- the shipped devices: what used to be spread over four modules, now read from the specs

def test_paper_devices_are_declared():
    assert derivable_devices()[:3] == list(PAPER)
    assert {n: (DEVICES[n].batch, DEVICES[n].throughput, DEVICES[n].published_column)
            for n in PAPER} == {"arm": (1, False, "arm_ms"), "cpu": (1, False, "cpu_ms"),
                                "gpu": (32, True, "gpu_fps")}


@pytest.mark.parametrize("name", derivable_devices())
def test_shipped_sidecar_is_the_spec(name):
    """The committed derived table says exactly what its spec declares."""
    spec, meta = DEVICES[name], LatencyTable.load(name).meta
    assert (meta["target"], meta["batch"], meta["threads"]) == (spec.target, spec.batch, spec.threads)
    assert {k: meta["device"][k] for k in spec.hardware} == dict(spec.hardware)
    assert meta["device"]["description"] == spec.description == meta["derived"]["description"]
    assert meta["protocol"]["published_protocol"] == spec.published_protocol
    assert meta["derived"]["published_column"] == spec.published_column
    assert (meta["derived"]["measure_command"], meta["derived"]["measure_on"]) == (
        spec.measure_command, spec.measure_on)
    assert meta["derived"]["profile_constants"]["act_cost_ratio"] == spec.activation_cost[0]
    assert INITIAL[name] == spec.prior_profile() and ACTIVATION_COSTS[name] == spec.activation_cost
    assert DERIVED_DEVICES[name]["measure_command"] == spec.measure_command


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Toy NPU"}, "name: 'Toy NPU'"),
    ({"aliases": ("ok", "Cortex-A72")}, "aliases: 'Cortex-A72'"),
    ({"target": "tpu"}, "target: 'tpu'"),
    ({"batch": 0}, "batch: 0"),
    ({"threads": 0}, "threads: 0"),
    ({"prior": None}, "needs a prior"),
    ({"prior": {"bandwidth_gbs": 1.0}}, "missing"),
    ({"prior": {**DEVICES["cpu"].prior, "bandwith_gbs": 1.0}}, "bandwith_gbs"),
])
def test_spec_validates_on_construction(change, message):
    with pytest.raises((ValueError, TypeError), match=message):
        dataclasses.replace(DEVICES["cpu"], **change)


def test_register_refuses_a_taken_name_or_alias():
    with pytest.raises(ValueError, match="'rpi4' is already 'arm'"):
        register_device(dataclasses.replace(DEVICES["cpu"], name="pi", aliases=("rpi4",)))
    with pytest.raises(ValueError, match="'gpu' is already 'gpu'"):
        register_device(DEVICES["gpu"])
    assert "pi" not in DEVICES


# --- a toy derived device: one declaration, then the ordinary commands

def _toy(**kw: object) -> DeviceSpec:
    base: dict[str, object] = dict(
        name="toy-npu", aliases=("toy", "npu-9000"),
        description="Toy NPU 9000, throughput at batch 8, fp16",
        hardware={"gpu_name": "Toy NPU 9000", "machine": "riscv64"},
        target="cuda", batch=8, threads=None, throughput=True,
        measure_on="the toy board", published_column="gpu_fps",
        published_protocol="throughput at batch 8, fp16 (a test's invention)",
        prior={**DEVICES["gpu"].prior}, activation_cost=(1.5, "made up for the test"))
    base.update(kw)
    return DeviceSpec(**base)  # type: ignore[arg-type]


TOYS = {
    "images/s": _toy(),
    "ms": _toy(name="toy-mcu", aliases=("toy",), description="Toy MCU, 2 threads, batch 1",
               hardware={"cpu_model": "Toy MCU", "machine": "armv7l"}, target="cpu", batch=1,
               threads=2, throughput=False, measure_on="the toy MCU", published_column="arm_ms",
               published_protocol="batch 1, two threads", prior={**DEVICES["arm"].prior}),
}
TINY_SPACE = {"stages": 2, "widths": [[16], [32]], "depths": [[1], [1, 2]], "n_divs": [4],
              "mlp_ratios": [2], "kernel_sizes": [3], "act": ["relu"], "feature_dim": [64]}


def _fake_traces() -> tuple[dict, dict]:
    """Small conv stacks named after published networks (instead of tracing the real ones)."""
    torch.manual_seed(0)
    have = load_networks().dropna(subset=["gpu_fps", "arm_ms"])["network"].tolist()[:5]
    nets = {name: trace(nn.Sequential(*[nn.Conv2d(c, c, 3, padding=1)] * (i + 1), nn.ReLU()),
                        torch.randn(1, c, 16, 16))
            for i, (name, c) in enumerate(zip(have, (8, 16, 24, 32, 48)))}
    return nets, {}


@pytest.fixture(params=list(TOYS), ids=[f"toy-{u}" for u in TOYS])
def toy(request, tmp_path, monkeypatch) -> Iterator[DeviceSpec]:
    """A toy device registered for one test; its calibrate writes under `tmp_path`."""
    spec = register_device(TOYS[request.param])
    monkeypatch.setenv("PCONV_NAS_TABLES", str(tmp_path / "tables"))
    monkeypatch.setattr(derive, "published_traces", _fake_traces)
    monkeypatch.setattr(derive, "identifiability", functools.partial(identifiability, n_boot=4))
    monkeypatch.setattr(derive_cli, "calibrate_published", functools.partial(
        derive.calibrate_published, profiles_dir=tmp_path / "profiles",
        reports_dir=tmp_path / "reports", tables_dir=tmp_path / "tables"))
    try:
        yield spec
    finally:
        DEVICES.pop(spec.name)


def test_toy_derived_device_needs_only_its_spec(toy, tmp_path, capsys):
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    assert main(["calibrate", "--device", "TOY", "--space", str(space), "--resolution", "32"]) == 0
    out = capsys.readouterr().out
    assert toy.description in out and f"`{toy.measure_command}` on {toy.measure_on}" in out

    # the table: found by alias, derived, its sidecar is the spec
    table = LatencyTable.load("toy")
    assert resolve_alias("npu-9000" if toy.throughput else "toy") == table.name == toy.name
    assert table.source == "derived" and table.batch == toy.batch
    assert table.throughput == toy.throughput
    meta = table.meta
    assert (meta["target"], meta["threads"]) == (toy.target, toy.threads)
    assert {**toy.hardware, "description": toy.description}.items() <= meta["device"].items()
    assert meta["protocol"]["published_protocol"] == toy.published_protocol
    assert meta["derived"]["published_column"] == toy.published_column
    assert meta["derived"]["measure_command"] == toy.measure_command
    assert meta["derived"]["profile_constants"]["act_cost_ratio"] == toy.activation_cost[0]
    arch = SearchSpace.from_file(space).to_arch({"depth_s1": 2})
    assert table.predict(arch) > 0

    # the profile: fitted from the spec's prior, in the spec's protocol
    profile = json.loads((tmp_path / "profiles" / f"{toy.name}.json").read_text())
    assert profile["device"] == toy.name and profile["batch"] == toy.batch
    assert profile["fit"]["published_column"] == toy.published_column
    assert INITIAL[toy.name] == toy.prior_profile()

    # the report: the spec's unit and description
    report = (tmp_path / "reports" / f"derived_{toy.name}.md").read_text()
    unit = "images/s" if toy.throughput else "ms"
    assert report.startswith(f"# Derived latency model: `{toy.name}` — {toy.description}")
    assert f"| network | published ({unit}) |" in report

    # what the search prints, and the command a missing layer suggests
    note = provenance_note(table)
    assert "DERIVED" in note and toy.measure_command in note and toy.measure_on in note
    argv = shlex.split(table.rebuild_command(space, resolution=32))
    assert argv[3:6] == ["calibrate", "--device", toy.name]
    assert main(["show", "--device", "toy"]) == 0
    assert toy.name in capsys.readouterr().out

    # the CLI lists it, and the paper's devices are untouched
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    assert f"|{toy.name}" in capsys.readouterr().out.replace("\n", "").replace(" ", "")
    assert derivable_devices()[-1] == toy.name and device_spec("rtx2080ti") is DEVICES["gpu"]


def test_toy_measured_device_is_not_derived(tmp_path, monkeypatch, capsys):
    """A spec without published figures: aliases resolve, `calibrate` means a measured table."""
    spec = register_device(DeviceSpec(
        name="toy-board", aliases=("tb",), description="Toy board, 1 thread, batch 1",
        hardware={"cpu_model": "Toy SoC"}, target="cpu", measure_on="the toy board"))
    monkeypatch.setenv("PCONV_NAS_TABLES", str(tmp_path))
    try:
        assert not spec.derivable and "toy-board" not in DERIVED_DEVICES
        assert spec.measure_command == ("python -m latency_tables build --device toy-board "
                                        "--target cpu --threads 1")
        assert main(["calibrate", "--device", "tb"]) == 2  # no table measured yet
        err = capsys.readouterr().err
        assert "no latency table named 'toy-board'" in err
        with pytest.raises(ValueError, match="'toy-board' has no published figures"):
            derive.calibrate_published("tb")
    finally:
        DEVICES.pop(spec.name)
