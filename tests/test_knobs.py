"""The knob registry (`search_space.knobs.KNOBS`): what derives from it, tests generated from it,
and a toy knob that `ArchConfig` and `SearchSpace` pick up with no other edit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from latency_tables.layers import BLOCK_KNOBS, LayerSig, arch_layers
from search_space import PRESETS, ArchConfig, ArchError, SearchSpace, build_model, count_params
from search_space.arch import knob_fields
from search_space.knobs import KNOBS, Knob, at_least_one

REPO = Path(__file__).resolve().parents[1]
T0 = PRESETS["fasternet_t0"]
BY_FIELD = {k.field: k for k in KNOBS}


def with_example(arch: ArchConfig, knob: Knob) -> ArchConfig:
    """`arch` with `knob` set to its example value (in every stage for a per-stage knob)."""
    value = (knob.example,) * arch.num_stages if knob.per_stage else knob.example
    return arch.replace(**{knob.field: value})


# ---------------------------------------------------------------------- derived from KNOBS
def test_arch_fields_and_file_keys_are_the_knobs():
    assert [f.name for f in dataclasses.fields(ArchConfig)] == [k.field for k in KNOBS]
    assert list(T0.to_dict()) == [k.key for k in KNOBS]
    with pytest.raises(TypeError):
        ArchConfig(T0.widths, T0.depths)  # type: ignore[misc]  # keyword-only


def test_committed_ids_and_parameter_names_do_not_move():
    """Ids and Optuna names are committed data (reports, reference sets, stored studies)."""
    assert T0.arch_id == "fn-13e8e43ad7"
    reference = json.loads((REPO / "proxies" / "reference" / "fashion-mnist" / "set.json").read_text())
    for member in reference["members"]:
        assert ArchConfig.from_dict(member["arch"]).arch_id == member["arch_id"]
    assert list(SearchSpace.default().params()) == [
        *(f"{p}_s{i}" for p in ("width", "depth", "n_div") for i in range(4)),
        *(f"mlp_ratio_s{i}" for i in range(4)), *(f"kernel_size_s{i}" for i in range(4)),
        "act", "feature_dim"]


def test_space_parameter_names_come_from_the_knobs():
    two = {k.field: [k.default if k.default is not None else k.example, k.example] for k in KNOBS}
    two["widths"], two["depths"] = [32, 48], [1, 3]
    space = SearchSpace.from_dict({"stages": 2, **two})
    expected = [f"{k.param}_s{i}" if k.per_stage else k.param
                for k in KNOBS for i in (range(2) if k.per_stage else [0])]
    assert list(space.params()) == expected
    tied = SearchSpace.from_dict({"stages": 2, **two, "tie": ["n_divs"]})
    assert "n_div" in tied.params() and "n_div_s0" not in tied.params()


@pytest.mark.parametrize("knob", KNOBS, ids=lambda k: k.field)
def test_each_knob_round_trips_and_moves_the_id(knob, tmp_path):
    arch = with_example(T0, knob)
    assert getattr(arch, knob.field) != getattr(T0, knob.field)
    assert arch.arch_id != T0.arch_id and str(arch) != str(T0)
    for suffix in (".yaml", ".json"):
        assert ArchConfig.from_file(arch.save(tmp_path / f"a{suffix}")) == arch
    # a space where this knob alone has a choice: T0's value or the example
    data = {k.field: [[v] for v in getattr(T0, k.field)] if k.per_stage else [getattr(T0, k.field)]
            for k in KNOBS}
    data[knob.field] = ([[v, knob.example] for v in getattr(T0, knob.field)] if knob.per_stage
                        else [getattr(T0, knob.field), knob.example])
    space = SearchSpace.from_dict(data)
    assert all(p.startswith(knob.param) for p in space.params()) and space.params()
    assert space.contains(arch) and space.contains(T0)
    assert space.to_arch({p: knob.example for p in space.params()}) == arch


@pytest.mark.parametrize("knob", KNOBS, ids=lambda k: k.field)
def test_each_knob_keeps_count_params_closed_form(knob):
    """`count_params` is written by hand: a knob that changes the network's parameters must
    be counted there too (this fails for a new knob that the count ignores)."""
    small = ArchConfig(widths=(16, 32), depths=(1, 1), n_divs=(4, 4), mlp_ratios=(2, 2),
                       kernel_sizes=(3, 3), feature_dim=64)
    arch = with_example(small, knob)
    model = build_model(arch, num_classes=10, device="meta")
    assert count_params(arch, num_classes=10) == sum(p.numel() for p in model.parameters())


def test_block_knobs_are_layer_signature_fields():
    fields = {f.name for f in dataclasses.fields(LayerSig)}
    assert [k.field for k in BLOCK_KNOBS] == ["n_divs", "mlp_ratios", "kernel_sizes", "act"]
    assert all(k.param in fields for k in BLOCK_KNOBS)
    for knob in BLOCK_KNOBS:
        keys = {s.key for _, s in arch_layers(with_example(T0, knob)) if s.kind == "block"}
        assert keys.isdisjoint(s.key for _, s in arch_layers(T0) if s.kind == "block"), knob.field


# ---------------------------------------------------------------------- adding a knob
#: A toy per-stage knob, declared as a new knob is (see search_space/README.md): optional, so
#: every existing file, id and string stays the same.
GROUPS = Knob(field="groups", key="groups", param="group", type=int, per_stage=True, default=1,
              optional=True, check=at_least_one, label="g", example=2, doc="toy: groups per stage.")


@knob_fields((*KNOBS, GROUPS))
class ToyArch(ArchConfig):
    """ArchConfig with one more knob, made only from the declarations."""


class ToySpace(SearchSpace):
    arch_class = ToyArch


def test_a_new_knob_is_picked_up_from_its_declaration(tmp_path):
    kwargs = {f.name: getattr(T0, f.name) for f in dataclasses.fields(ArchConfig)}
    toy = ToyArch(**kwargs)
    # at its default: the same file form, id and string as before the knob existed
    assert toy.groups == (1, 1, 1, 1)
    assert (toy.to_dict(), toy.arch_id, str(toy)) == (T0.to_dict(), T0.arch_id, str(T0))
    # set: validated, written, read back, in the id and the string
    grouped = toy.replace(groups=(1, 2, 1, 1))
    assert grouped.to_dict()["groups"] == [1, 2, 1, 1] and grouped.arch_id != T0.arch_id
    assert "g=1/2/1/1" in str(grouped)
    assert ToyArch.from_file(grouped.save(tmp_path / "g.yaml")) == grouped
    assert ToyArch.from_dict({**T0.to_dict(), "groups": 2}).groups == (2, 2, 2, 2)
    with pytest.raises(ArchError, match=r"groups\[3\]: 0 must be >= 1"):
        toy.replace(groups=(1, 1, 1, 0))
    with pytest.raises(ArchError, match="did you mean 'groups'"):
        ToyArch.from_dict({**T0.to_dict(), "groupz": 2})
    assert "groups" in ToyArch.__doc__ and "groups" not in ArchConfig.__doc__
    # the search space: a space key, Optuna parameters, sampling, membership
    space = ToySpace.from_dict({"widths": [40, 48], "depths": [1, 2], "groups": [1, 2]})
    assert [p for p in space.params() if p.startswith("group")] == [f"group_s{i}" for i in range(4)]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {space.suggest(study.ask()).groups for _ in range(20)}
    assert len(seen) > 1 and all(isinstance(g, tuple) and len(g) == 4 for g in seen)
    arch = space.sample(np.random.default_rng(1))
    assert isinstance(arch, ToyArch) and space.contains(arch)
    assert "group" in ToySpace.from_dict({"widths": [40], "depths": [1], "groups": [1, 2],
                                          "tie": ["groups"]}).params()
    assert "group_s0" not in ToySpace.from_dict({"widths": [40], "depths": [1]}).params()
    with pytest.raises(ArchError, match="groups"):
        ToySpace.from_dict({"widths": [40], "depths": [1], "groups": [0]})
    # the real registry is untouched
    assert not hasattr(T0, "groups") and "groups" not in SearchSpace.from_dict(
        {"widths": [40], "depths": [1]}).stage_choices
