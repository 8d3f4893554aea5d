"""Runtimes and deployment forms (issue 23, parts 2 and 3): the registry and its bad input, every
form's logits, one layer and one tiny network round-tripped through ONNX Runtime and
ExecuTorch, a table built and validated in a runtime, the form choice, and `search.py export
--runtime` end to end. Tiny widths and resolutions keep exports to a few seconds."""

from __future__ import annotations

import json

import pytest
import torch

import search
from latency_tables import LatencyTable, Protocol, build_table, make_layer, space_layers
from latency_tables.__main__ import main as lt_main
from latency_tables.deploy import choose_form, logits_tolerance
from latency_tables.measure import time_layer
from latency_tables.runtimes import (
    RUNTIMES,
    NotFullyLowered,
    RuntimeMismatch,
    RuntimeNotInstalled,
    UnknownRuntime,
    get_runtime,
)
from latency_tables.validate import measure_networks, validate
from search_space import ArchConfig, SearchSpace, build_model
from search_space.forms import FORMS, to_form

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"stages": 2, "widths": [[16], [32]], "depths": [[1], [1, 2]], "n_divs": [4],
        "mlp_ratios": [2], "kernel_sizes": [3], "act": ["gelu"], "feature_dim": [64]}
FAST = Protocol(warmup=1, min_repeats=3, max_repeats=3, min_time_s=0.0, context_bytes=1 << 16,
                max_copies=2)
RES = 32
ARCH = ArchConfig(widths=(16, 32), depths=(1, 2), n_divs=(4, 2), mlp_ratios=(2, 1.5),
                  kernel_sizes=(3, 5), act="gelu", feature_dim=32)
COMPILED = ("onnxruntime", "executorch")


def one_line(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


@pytest.fixture()
def space():
    return SearchSpace.from_dict(TINY, source="tiny")


# ---------------------------------------------------------------------------- registry
def test_registry_names_versions_and_forms():
    assert list(RUNTIMES) == ["eager", "onnxruntime", "executorch"]
    for rt in RUNTIMES.values():
        assert rt.default_form in FORMS and rt.pin.startswith(rt.distribution + "==")
        if rt.available():
            assert rt.version() in rt.describe()
    assert RUNTIMES["eager"].version() == torch.__version__
    with pytest.raises(UnknownRuntime, match="choose one of eager, onnxruntime, executorch"):
        get_runtime("tflite")


def test_missing_runtime_names_the_pip_command(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "executorch" else real(name, *a))
    with pytest.raises(RuntimeNotInstalled, match=r"pip install executorch==1\.5\.1"):
        get_runtime("executorch").compile(torch.nn.Identity(), (torch.zeros(1),))
    rc = lt_main(["build", "--runtime", "executorch", "--out", str(tmp_path)])
    one_line(rc, capsys.readouterr().err, "pip install executorch==1.5.1")
    rc = lt_main(["build", "--runtime", "tflite", "--out", str(tmp_path)])
    one_line(rc, capsys.readouterr().err, "--runtime 'tflite'", "executorch")


# ---------------------------------------------------------------------------- forms
@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_gives_the_training_logits(form, odd_arch, randomize):
    arch, res = odd_arch
    model = randomize(build_model(arch, num_classes=10).eval())
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        ref = model(x)
        got = to_form(model, form)(x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("form", list(FORMS))
def test_make_layer_builds_each_form(form, space):
    for sig in space_layers(space, RES):
        module, x = make_layer(sig, form=form)
        with torch.no_grad():
            assert module(x).shape[0] == 1


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("runtime", COMPILED)
def test_layer_round_trip(runtime, space):
    """One block, compiled as the chain of copies a table times, gives eager's output."""
    sig = next(s for s in space_layers(space, RES) if s.kind == "block")
    form = get_runtime(runtime).default_form
    module, x = make_layer(sig, form=form)
    proto = Protocol(**{**FAST.to_dict(), "runtime": runtime, "form": form})
    t = time_layer(module, x, proto, chain=True)
    assert t.median_ms > 0 and t.copies == 2
    compiled = get_runtime(runtime).compile(module, (x,))
    with torch.no_grad():
        ref = module(x)
    assert float((compiled(x) - ref).abs().max()) <= logits_tolerance(ref)


@pytest.mark.parametrize("runtime", COMPILED)
def test_tiny_network_round_trip(runtime, randomize):
    model = randomize(build_model(ARCH, num_classes=10).eval())
    x = torch.randn(1, 3, RES, RES)
    with torch.no_grad():
        ref = model(x)
    for form in ("narrow", "sliced", "timm"):
        c = get_runtime(runtime).compile(to_form(model, form), (x,), strict=False)
        assert float((c(x) - ref).abs().max()) <= logits_tolerance(ref), form
        assert c.artifact and (c.outside == () or runtime == "executorch")
    if runtime == "executorch":  # XNNPACK does not take the fused form's in-place GEMMs
        with pytest.raises(NotFullyLowered, match="aten.addmm"):
            get_runtime(runtime).compile(to_form(model, "fused"), (x,))


# ---------------------------------------------------------------------------- tables
def test_table_in_a_runtime_records_it_and_validates_in_it(tmp_path, space, capsys):
    proto = Protocol(**{**FAST.to_dict(), "runtime": "onnxruntime", "form": "narrow"})
    path = build_table("tiny-ort", space, resolution=RES, proto=proto, sweeps=1, out_dir=tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert (meta["runtime"], meta["runtime_version"], meta["form"]) == (
        "onnxruntime", get_runtime("onnxruntime").version(), "narrow")
    assert meta["protocol"]["runtime"] == "onnxruntime"
    table = LatencyTable.load(path)
    assert table.runtime == "onnxruntime" and "onnxruntime" in table.describe()
    assert "--runtime onnxruntime --form narrow" in table.rebuild_command()
    assert "narrow form" in table.provenance_note()
    with pytest.raises(RuntimeMismatch, match="measured in onnxruntime, not executorch"):
        table.check_runtime("executorch")
    v = validate(table, n=2, seed=0, rounds=1, calib_n=0, space=space)
    assert (v.rows["measured_ms"] > 0).all()
    rc = lt_main(["validate", "--device", str(path), "--runtime", "executorch", "--n", "2"])
    one_line(rc, capsys.readouterr().err, "measured in onnxruntime, not executorch")


def test_budgeted_build_in_a_runtime(tmp_path):
    """The budgeted path records the runtime; its per-layer time is whatever the timer took."""
    from test_latency_budget import FakeClock

    clock = FakeClock(seconds_per_layer=1.0)
    proto = Protocol(runtime="executorch", form="timm")
    path = build_table("b", SearchSpace.default(), out_dir=tmp_path, budget_s=120, sweeps=1,
                       proto=proto, clock=clock, timer=clock.timer, form_choice={"chosen": "timm"})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["runtime"] == "executorch" and meta["form"] == "timm"
    assert meta["form_choice"] == {"chosen": "timm"} and meta["budget"]["measured"] == 120
    assert "executorch" in LatencyTable.load(path).describe()


def test_eager_sidecar_defaults(tmp_path, space):
    path = build_table("e", space, resolution=RES, proto=FAST, sweeps=1, out_dir=tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert (meta["runtime"], meta["runtime_version"], meta["form"]) == ("eager", torch.__version__, "fused")
    shipped = LatencyTable.load("amd-epyc")  # written before the fields: eager, fused
    assert (shipped.runtime, shipped.form) == ("eager", "fused")


def test_measure_networks_in_a_runtime(space):
    archs = [space.to_arch({"depth_s1": 1})]
    proto = Protocol(**{**FAST.to_dict(), "runtime": "onnxruntime", "form": "timm"})
    (ms,) = measure_networks(archs, proto, RES, rounds=1, num_classes=10)
    assert ms > 0


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("executorch", marks=pytest.mark.slow)])
def test_choose_form_picks_a_fully_lowered_match(runtime):
    nets = [("tiny", ARCH)]
    choice = choose_form(runtime, FAST, resolution=RES, networks=nets, rounds=1, num_classes=10)
    record = choice.to_dict()
    assert set(record["forms"]) == set(FORMS) and record["chosen"] == choice.chosen
    assert record["forms"][choice.chosen]["eligible"]
    best = min(r.total_ms() for r in choice.results if r.eligible)
    chosen = next(r for r in choice.results if r.form == choice.chosen)
    assert chosen.total_ms() <= best * 1.02 and choice.chosen in choice.summary()
    ties = [r.form for r in choice.results if r.eligible and r.total_ms() <= best * 1.02]
    assert choice.chosen == ties[0]  # ties go to the first form in FORMS order
    if runtime == "executorch":
        assert not record["forms"]["fused"]["eligible"]
        assert any("addmm" in op for op in record["forms"]["fused"]["outside_delegate"])


# ---------------------------------------------------------------------------- export
@pytest.mark.parametrize("runtime, suffix", [("onnxruntime", ".onnx"), ("executorch", ".pte")])
def test_export_runtime_end_to_end(runtime, suffix, tmp_path, capsys):
    src = tmp_path / "arch.yaml"
    ARCH.save(src)
    out = tmp_path / f"m{suffix}"
    rc = search.main(["export", str(src), "--runtime", runtime, "--out", str(out), "--form",
                      "narrow", "--resolution", str(RES), "--num-classes", "10"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "ms per image measured here" in text.out and get_runtime(runtime).describe() in text.out
    assert "1 thread, batch 1" in text.out and "logits match PyTorch eager" in text.out
    loaded = get_runtime(runtime).load(out)
    assert loaded(torch.randn(1, 3, RES, RES)).shape == (1, 10)


@pytest.mark.parametrize("args, needles", [
    (["--runtime", "tflite", "--out", "m.onnx"], ["--runtime 'tflite'"]),
    (["--runtime", "onnxruntime", "--out", "m.pte"], ["ends in .onnx"]),
    (["--runtime", "executorch", "--out", "m.pte", "--form", "fused"],
     ["cannot be lowered fully", "aten.addmm"]),
    (["--runtime", "executorch", "--out", "m.pte", "--table", "amd-epyc"],
     ["measured in eager, not executorch"]),
    (["--runtime", "onnxruntime", "--out", "m.onnx", "--form", "square"], ["unknown deployment form"]),
])
def test_export_runtime_bad_input(args, needles, tmp_path, capsys, monkeypatch):
    src = tmp_path / "arch.yaml"
    ARCH.save(src)
    monkeypatch.chdir(tmp_path)
    rc = search.main(["export", str(src), *args, "--resolution", str(RES), "--num-classes", "10"])
    one_line(rc, capsys.readouterr().err, *needles)
