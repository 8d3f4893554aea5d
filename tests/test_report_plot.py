"""pareto.png's content without pixels: `plot_data` (what `_plot` draws) on hand-made fronts.

Its bars are the report's ± (95 %), its tie flags the ones the report's tie sentence counts,
and its ground-truth stars sit exactly where a reference set trained the architecture under
the protocol the run's estimate predicts (STYLE.md, "Compute, then draw").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from optimize.report import (
    TIE_Z,
    Candidate,
    Front,
    _plot,
    accuracy_error,
    estimated_protocol,
    fronts,
    plot_data,
    reference_truth,
    tie_note,
    ties_with_best,
)
from proxies.reference import Member, Protocol, ReferenceSet
from search_space import PRESETS, ArchConfig

T0 = PRESETS["fasternet_t0"]
PROTOCOL = Protocol(epochs=10, batch_size=256, lr=5e-4, resolution=32)
SOURCE = ("latency table 'd' is measured on Test CPU (2026-01-01, batch 1, 1 thread(s)); "
          "40 % of its rows predicted.")
ESTIMATE = (f"estimate: predicted {PROTOCOL.protocol_id} accuracy on fashion-mnist (ridge over "
            "quick_acc, log_mflops; fitted on 16 architectures; leave-one-out error 0.54 points)")


def variant(i: int) -> ArchConfig:
    """Distinct architectures (distinct arch_ids)."""
    return dataclasses.replace(T0, feature_dim=64 + 8 * i)


def cand(i: int, acc: float, ms: float, *, fidelity: str = "quick", kind: str = "trial",
         se: float | None = None, proposed: int = 1) -> Candidate:
    return Candidate(name=f"{kind} {i}", number=i, state="complete", arch=variant(i), accuracy=acc,
                     latency_ms={"d": ms}, params_m=1.0, fidelity=fidelity, accuracy_se=se,
                     proposed=proposed)


def hand_front(**kw) -> Front:
    """Four members on the quick budget (2000 validation images): three within a point of
    each other, one 8 points below; a dominated point and a preset."""
    members = [cand(0, 0.74, 1.0), cand(1, 0.82, 2.0, proposed=3), cand(2, 0.825, 3.0),
               cand(3, 0.83, 4.0)]
    preset = dataclasses.replace(cand(9, 0.80, 3.5, kind="preset"), name="fasternet_t0", number=None)
    return Front(device="d", source=SOURCE, members=members, others=[cand(5, 0.70, 3.5)],
                 presets=[preset], accuracy_source=ESTIMATE, **kw)


def test_bars_are_the_reports_errors_and_ties_match_its_sentence():
    front = hand_front()
    data = plot_data(front)
    by_name = {p.name: p for p in data.points}
    for c in [*front.members, *front.presets]:
        assert by_name[c.name].error == pytest.approx(TIE_Z * accuracy_error(c))
        assert (by_name[c.name].latency_ms, by_name[c.name].accuracy) == (c.latency_ms["d"], c.accuracy)
    ties = ties_with_best(front)
    assert [p.tie for p in data.points if p.kind == "member"] == [ties[c.arch_id] for c in front.members]
    assert ties == {variant(0).arch_id: False, variant(1).arch_id: True, variant(2).arch_id: True,
                    variant(3).arch_id: True}
    # The report's sentence counts the same members the plot draws hollow.
    hollow = sum(p.tie is True for p in data.points)
    assert f"{hollow} of the {len(front.members)} front members" in tie_note(front)
    assert all(p.tie is None for p in data.points if p.kind != "member")
    assert by_name["trial 5"].kind == "dominated" and by_name["trial 5"].error is not None
    assert [p.label for p in data.points if p.kind != "dominated"] == ["", "x3", "", "", "T0"]
    lo, hi = data.tie_margin
    assert 0 < lo <= hi < 0.83 - 0.74  # the gap that ties is wider than one bar, narrower than the drop
    assert data.notes == []


def test_axis_labels_name_the_sources():
    data = plot_data(hand_front())
    assert data.latency_label == "latency, ms/image on d: latency table 'd' is measured on Test CPU " \
                                 "(2026-01-01, batch 1, 1 thread(s))"
    label = " ".join(data.accuracy_label.split())
    assert label.startswith(f"estimate: predicted {PROTOCOL.protocol_id} accuracy on fashion-mnist, "
                            "from the quick budget") and "ridge" not in label
    assert label.endswith("bars: ± 95 %")
    trained = dataclasses.replace(hand_front(), accuracy_source=(
        "short_train: accuracy on the validation split after the `quick` budget"))
    assert " ".join(plot_data(trained).accuracy_label.split()) == (
        "short_train: accuracy on the validation split after the `quick` budget bars: ± 95 %")


def test_no_uncertainty_draws_no_bar_and_says_so():
    front = hand_front()
    bare = dataclasses.replace(front, members=[dataclasses.replace(c, fidelity="")
                                               for c in front.members])
    data = plot_data(bare)
    members = [p for p in data.points if p.kind == "member"]
    assert all(p.error is None and p.tie is None for p in members)
    assert data.tie_margin is None and tie_note(bare) == ""
    assert data.notes == ["no bar on 4 point(s): the proxy states no uncertainty"]
    assert [p.error is None for p in data.points if p.kind == "preset"] == [False]
    # The estimate's own standard error is the bar where it states one.
    stated = dataclasses.replace(front, members=[dataclasses.replace(c, accuracy_se=0.004)
                                                 for c in front.members])
    assert [p.error for p in plot_data(stated).points if p.kind == "member"] == pytest.approx(
        [TIE_Z * 0.004] * 4)


def _reference_set(folder: Path, dataset: str, archs: list[ArchConfig],
                   runs: list[tuple[int, int, float, str, str]]) -> None:
    """A set folder: `runs` as (arch index, seed, accuracy, status, protocol id)."""
    members = tuple(Member(arch=a, role="sampled", stratum=0, split="tune") for a in archs)
    ReferenceSet(dataset=dataset, members=members, seeds=(0, 1, 2), protocols=(PROTOCOL,),
                 design={}).save(folder)
    with open(folder / "runs-test.jsonl", "w") as f:
        for i, seed, acc, status, protocol in runs:
            f.write(json.dumps({"protocol_id": protocol, "arch_id": archs[i].arch_id, "seed": seed,
                                "status": status, "accuracy": acc}) + "\n")


def test_ground_truth_where_reference_rows_exist(tmp_path):
    pid = PROTOCOL.protocol_id
    # Set "a": trial 1 with two seeds (a third failed), trial 3 under another protocol only,
    # the preset with seed 0. Set "b" repeats the preset's seed 0 (counted once, from "a")
    # and adds its seed 1. Set "c" is another dataset: its rows for trial 2 do not count.
    _reference_set(tmp_path / "a", "fashion-mnist", [variant(1), variant(3), variant(9), variant(5)],
                   [(0, 0, 0.90, "ok", pid), (0, 1, 0.92, "ok", pid), (0, 2, 0.10, "failed", pid),
                    (1, 0, 0.95, "ok", "e5-b256-lr0.0005-r32"), (2, 0, 0.80, "ok", pid),
                    (3, 0, 0.71, "ok", pid)])
    _reference_set(tmp_path / "b", "fashion-mnist", [variant(9)],
                   [(0, 0, 0.99, "ok", pid), (0, 1, 0.84, "ok", pid)])
    _reference_set(tmp_path / "c", "cifar10", [variant(2)], [(0, 0, 0.5, "ok", pid)])
    truth = reference_truth("fashion-mnist", pid, [tmp_path / "c", tmp_path / "b", tmp_path / "a"])
    assert set(truth) == {variant(1).arch_id, variant(9).arch_id, variant(5).arch_id}
    t1, preset = truth[variant(1).arch_id], truth[variant(9).arch_id]
    assert (t1.accuracy, t1.seeds, t1.protocol, t1.sets) == (pytest.approx(0.91), 2, pid, ("a",))
    assert (preset.accuracy, preset.seeds, preset.sets) == (pytest.approx(0.82), 2, ("a", "b"))

    data = plot_data(hand_front(truth=truth))
    known = {p.name: p.truth for p in data.points if p.truth is not None}
    assert known == {"trial 1": t1, "fasternet_t0": preset}  # dominated trial 5: no star
    # fronts() hands the truth and the accuracy's source to every front.
    (f,) = fronts([cand(1, 0.82, 2.0)], [], {"d": SOURCE}, accuracy_source=ESTIMATE, truth=truth)
    assert f.truth[variant(1).arch_id] == t1 and f.accuracy_source == ESTIMATE


def test_the_estimates_protocol_is_read_from_its_provenance():
    from proxies.estimate import EstimateModel

    model = EstimateModel.load("fashion-mnist")
    assert estimated_protocol(f"estimate: {model.provenance}") == model.protocol
    assert estimated_protocol(ESTIMATE) == PROTOCOL.protocol_id
    assert estimated_protocol("short_train: accuracy on the validation split after the `quick` "
                              "budget") is None


def test_committed_sets_know_the_presets():
    truth = reference_truth("fashion-mnist", "e10-b256-lr0.0005-r32")
    assert all(PRESETS[n].arch_id in truth for n in ("fasternet_t0", "fasternet_t1", "fasternet_t2"))
    assert reference_truth("cifar10", "e10-b256-lr0.0005-r32") == {}


def test_plot_writes_a_png(tmp_path):
    pid = PROTOCOL.protocol_id
    _reference_set(tmp_path / "ref", "fashion-mnist", [variant(1)], [(0, 0, 0.9, "ok", pid)])
    with_truth = hand_front(truth=reference_truth("fashion-mnist", pid, [tmp_path / "ref"]))
    promoted = dataclasses.replace(with_truth, device="e", members=[
        dataclasses.replace(c, rung=1, fidelity="full", latency_ms={"e": c.latency_ms["d"]})
        if i % 2 else dataclasses.replace(c, fidelity="", latency_ms={"e": c.latency_ms["d"]})
        for i, c in enumerate(with_truth.members)], others=[], presets=[])
    path = tmp_path / "pareto.png"
    _plot([with_truth, promoted], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_times_measured_here_go_beside_the_predictions(tmp_path):
    """Members and presets timed here (`optimize.measured`) are drawn at their measured time on
    the same accuracy, and the report's sentence names the one beyond +-10 %."""
    front = hand_front()
    here = {variant(1).arch_id: 2.1, variant(3).arch_id: 5.0, variant(9).arch_id: 3.4,
            variant(5).arch_id: 9.9}  # the dominated one: not drawn
    timed = dataclasses.replace(front, measured=here, measured_how="on Test CPU (eager)")
    by_name = {p.name: p for p in plot_data(timed).points}
    assert by_name["trial 1"].measured_ms == 2.1 and by_name["trial 3"].measured_ms == 5.0
    assert by_name["fasternet_t0"].measured_ms == 3.4
    assert by_name["trial 0"].measured_ms is None and by_name["trial 5"].measured_ms is None
    note = timed.measured_note()
    assert note.startswith("Measured here: the 3 members and presets timed whole on Test CPU (eager)")
    assert "worst -20.0 % (trial 3)" in note and "beyond +-10 %: trial 3." in note
    assert front.measured_note() == ""
    _plot([timed], tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
