"""ArchConfig: validation, file round-trip (official FasterNet cfg keys), id and string form."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from search_space import PRESETS, ArchConfig, ArchError, SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
T0 = PRESETS["fasternet_t0"]
OFFICIAL_KEYS = {"embed_dim", "depths", "n_div", "mlp_ratio", "kernel_size", "act_layer", "feature_dim",
                 "patch_size", "patch_size2"}

# The official FasterNet cfg/fasternet_t0.yaml layout: uniform scalar knobs, fixed official
# keys, build keys and training keys (the training keys must be ignored).
OFFICIAL_T0_YAML = """\
# Data
dataset_name: imagenet
image_size: 224
test_crop_ratio: 0.9
multi_scale: null #!!str 2_-1_-1_-1

# Model
model_name: fasternet
mlp_ratio: 2
embed_dim: 40
depths: [1, 2, 8, 2]
feature_dim: 1280
patch_size: 4
patch_stride: 4
patch_size2: 2
patch_stride2: 2
layer_scale_init_value: 0 # no layer scale
drop_path_rate: 0.
norm_layer: BN
act_layer: GELU
n_div: 4
pconv_fw_type: split_cat

# Training
batch_size: 256
lr: 0.004
weight_decay: 0.005
epochs: 300
warmup_epochs: 20
opt: adamw
sched: cosine
"""


def kw(**changes):
    """T0's constructor arguments with some changed."""
    return {**{f.name: getattr(T0, f.name) for f in dataclasses.fields(T0)}, **changes}


def sampled_archs(n: int = 12) -> list[ArchConfig]:
    rng = np.random.default_rng(0)
    spaces = [SearchSpace.default(), SearchSpace.from_file(REPO / "search_space" / "timm_global.yaml")]
    return [space.sample(rng) for space in spaces for _ in range(n // 2)]


def assert_one_line_error(excinfo, *fragments: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("changes, fragments", [
    ({"n_divs": (4, 4, 200, 4)}, ("n_divs[2]", "160", "200", "is 0")),
    ({"depths": (1, 2, 8)}, ("depths", "3", "4", "one value per stage")),
    ({"act": "swish"}, ("act", "swish", "gelu")),
    ({"kernel_sizes": (3, 4, 3, 3)}, ("kernel_sizes[1]", "4", "odd")),
    ({"depths": (1, 0, 8, 2)}, ("depths[1]", "0", ">= 1")),
    ({"widths": (40, 80, -160, 320)}, ("widths[2]", "-160", ">= 1")),
    ({"widths": ()}, ("widths", "at least one stage")),
    ({"widths": 40}, ("widths", "40", "list")),
    ({"widths": (40, 80, 160.5, 320)}, ("widths", "160.5", "integer")),
    ({"depths": (1, "2", 8, 2)}, ("depths", "'2'", "number")),
    ({"depths": (1, True, 8, 2)}, ("depths", "True", "number")),
    ({"depths": (1, 2, math.inf, 2)}, ("depths", "inf", "finite")),
    ({"mlp_ratios": (2, 2, math.nan, 2)}, ("mlp_ratios", "nan")),
    ({"mlp_ratios": (2, 0, 2, 2)}, ("mlp_ratios[1]", "0", "> 0")),
    ({"mlp_ratios": (2, 2, 2, math.inf)}, ("mlp_ratios", "inf")),
    ({"n_divs": (4, 0, 4, 4)}, ("n_divs[1]", "0", ">= 1")),
    ({"n_divs": "4444"}, ("n_divs", "'4444'", "list")),
    ({"feature_dim": 0}, ("feature_dim", "0", ">= 1")),
    ({"patch_size": -4}, ("patch_size", "-4", ">= 1")),
    ({"merge_size": 0}, ("merge_size", "0", ">= 1")),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_invalid_values_raise_one_line_value_error(changes, fragments):
    with pytest.raises(ValueError) as excinfo:
        ArchConfig(**kw(**changes))
    assert isinstance(excinfo.value, ArchError)
    assert_one_line_error(excinfo, *fragments)


def test_replace_validates():
    with pytest.raises(ArchError, match=r"kernel_sizes\[0\]"):
        T0.replace(kernel_sizes=(2, 3, 3, 3))
    assert T0.replace(act="relu").act == "relu"


def test_frozen_and_normalized():
    arch = ArchConfig(widths=[40, 80, 160, 320], depths=[1, 2, 8, 2], n_divs=[4] * 4,
                      mlp_ratios=[2] * 4, kernel_sizes=[3] * 4, act="GELU")
    assert arch == T0 and hash(arch) == hash(T0)
    assert isinstance(arch.widths, tuple) and arch.mlp_ratios == (2.0,) * 4
    assert arch.act == "gelu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        arch.widths = (1, 2, 3, 4)  # type: ignore[misc]


def test_derived_values():
    assert T0.num_stages == 4
    assert T0.strides == (4, 8, 16, 32)
    assert ArchConfig(**kw(patch_size=2, merge_size=3)).strides == (2, 6, 18, 54)


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_preset_round_trip(preset, suffix, tmp_path):
    arch = PRESETS[preset]
    path = arch.save(tmp_path / f"{preset}{suffix}")
    loaded = ArchConfig.from_file(path)
    assert loaded == arch and loaded.arch_id == arch.arch_id and str(loaded) == str(arch)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_sampled_round_trip(suffix, tmp_path):
    for i, arch in enumerate(sampled_archs()):
        assert ArchConfig.from_file(arch.save(tmp_path / f"a{i}{suffix}")) == arch, arch


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_odd_round_trip(suffix, tmp_path, odd_arch):
    arch = odd_arch[0]
    assert ArchConfig.from_file(arch.save(tmp_path / f"a{suffix}")) == arch


def test_file_uses_official_key_names(tmp_path):
    arch = ArchConfig(**kw(mlp_ratios=(1.5, 2, 2.5, 3), act="relu"))
    data = yaml.safe_load(arch.save(tmp_path / "a.yaml").read_text())
    assert set(data) == OFFICIAL_KEYS
    assert data["embed_dim"] == [40, 80, 160, 320] and data["depths"] == [1, 2, 8, 2]
    assert data["mlp_ratio"] == [1.5, 2, 2.5, 3] and data["act_layer"] == "RELU"
    assert data["patch_size2"] == 2
    assert json.loads(arch.save(tmp_path / "a.json").read_text()) == data


def test_save_unknown_suffix(tmp_path):
    with pytest.raises(ArchError) as excinfo:
        T0.save(tmp_path / "a.txt")
    assert_one_line_error(excinfo, ".txt")


def test_official_t0_cfg_loads_as_preset(tmp_path, caplog):
    path = tmp_path / "fasternet_t0.yaml"
    path.write_text(OFFICIAL_T0_YAML)
    with caplog.at_level(logging.INFO, logger="search_space.arch"):
        arch = ArchConfig.from_file(path)
    assert arch == PRESETS["fasternet_t0"]
    notes = " ".join(r.getMessage() for r in caplog.records)
    for key in ("lr", "epochs", "batch_size", "weight_decay"):
        assert key in notes
    for key in ("embed_dim", "depths", "n_div", "act_layer"):
        assert key not in notes


def test_official_uniform_form_gives_every_preset(preset, tmp_path):
    arch = PRESETS[preset]
    cfg = {"model_name": "fasternet", "mlp_ratio": 2, "embed_dim": arch.widths[0],
           "depths": list(arch.depths), "feature_dim": 1280, "patch_size": 4, "patch_stride": 4,
           "patch_size2": 2, "patch_stride2": 2, "layer_scale_init_value": 0,
           "drop_path_rate": 0.1, "norm_layer": "BN", "act_layer": arch.act.upper(), "n_div": 4,
           "lr": 0.004, "epochs": 300, "batch_size": 512}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert ArchConfig.from_file(tmp_path / "cfg.yaml") == arch


@pytest.mark.parametrize("data, fragments", [
    ({"embed_dim": [40, 80, 160, 320], "depths": [1, 2, 8, 2], "lr": 0.1}, ("'lr'",)),
    ({"embed_dim": [40, 80, 160, 320], "depths": [1, 2, 8, 2], "batch_size": 8}, ("'batch_size'",)),
    ({"embed_dim": [40, 80, 160, 320], "depths": [1, 2, 8, 2], "mlp_ratios": 2},
     ("'mlp_ratios'", "'mlp_ratio'")),
    ({"embed_dims": [40, 80, 160, 320], "depths": [1, 2, 8, 2]}, ("'embed_dims'", "'embed_dim'")),
    ({"embed_dims": 40, "depths": [1, 2, 8, 2], "lr": 0.1}, ("'embed_dims'", "'embed_dim'")),
    ({"embed_dim": 40, "depths": [1, 2, 8, 2], "n_divs": 4}, ("'n_divs'", "'n_div'")),
    ({"embed_dim": 40, "depths": [1, 2, 8, 2], "act_layers": "GELU"}, ("'act_layers'",)),
], ids=["per-stage-lr", "per-stage-batch_size", "per-stage-typo", "per-stage-embed_dims",
        "official-embed_dims", "official-n_divs", "official-act_layers"])
def test_unknown_architecture_keys_are_named(data, fragments):
    with pytest.raises(ArchError) as excinfo:
        ArchConfig.from_dict(data)
    assert_one_line_error(excinfo, "unknown", *fragments)


@pytest.mark.parametrize("extra, fragment", [
    ({"patch_stride": 2}, "patch_stride"),
    ({"patch_stride2": 1}, "patch_stride2"),
    ({"norm_layer": "LN"}, "norm_layer"),
    ({"layer_scale_init_value": 1e-6}, "layer_scale_init_value"),
    ({"n_div": 0}, "n_div"),
    ({"act_layer": "SiLU"}, "SiLU"),
    ({"depths": 8}, "depths"),
    ({"n_div": [4, 4]}, "n_divs"),
])
def test_official_form_rejects_unsupported_values(extra, fragment):
    data = {"embed_dim": 40, "depths": [1, 2, 8, 2], **extra}
    with pytest.raises(ArchError) as excinfo:
        ArchConfig.from_dict(data, source="cfg.yaml")
    assert_one_line_error(excinfo, "cfg.yaml", fragment)


@pytest.mark.parametrize("name, text, fragments", [
    ("bad.yaml", "embed_dim: [40, 80\ndepths: [1, 2]\n", ("bad.yaml", "malformed")),
    ("bad.yaml", "embed_dim: 40\n\tdepths: [1]\n", ("bad.yaml", "malformed")),
    ("bad.json", '{"embed_dim": [40], "depths": [1],}', ("bad.json", "malformed")),
    ("list.yaml", "- 40\n- 80\n", ("list.yaml", "mapping")),
    ("empty.yaml", "", ("empty.yaml", "mapping")),
    ("nodepths.yaml", "embed_dim: 40\n", ("nodepths.yaml", "depths")),
    ("nowidth.json", '{"depths": [1, 2]}', ("nowidth.json", "embed_dim")),
    ("zero.yaml", "embed_dim: [8, 16]\ndepths: [1, 1]\nn_div: [4, 32]\n", ("zero.yaml", "n_divs[1]")),
    ("inf.yaml", "embed_dim: 40\ndepths: [1, 2, .inf, 2]\n", ("inf.yaml", "depths", "inf")),
    ("even.json", '{"embed_dim": 40, "depths": [1, 2, 8, 2], "kernel_size": 4}',
     ("even.json", "kernel_sizes")),
])
def test_bad_files_give_one_line_errors(tmp_path, name, text, fragments):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as excinfo:
        ArchConfig.from_file(tmp_path / name)
    assert_one_line_error(excinfo, *fragments)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        ArchConfig.from_file(tmp_path / "nope.yaml")
    assert_one_line_error(excinfo, "nope.yaml", "cannot read")


# ---------------------------------------------------------------------------- id and str
def all_distinct_archs() -> list[ArchConfig]:
    """Presets, sampled archs and T0 with each field changed on its own."""
    mutations = [kw(widths=(40, 80, 160, 328)), kw(depths=(1, 2, 8, 3)), kw(n_divs=(4, 4, 4, 2)),
                 kw(mlp_ratios=(2, 2, 2, 2.5)), kw(kernel_sizes=(3, 3, 3, 5)), kw(act="relu"),
                 kw(feature_dim=1024), kw(patch_size=2), kw(merge_size=3)]
    archs = [*PRESETS.values(), *sampled_archs(), *(ArchConfig(**m) for m in mutations)]
    assert len(set(archs)) == len(archs)
    return archs


def test_arch_id_short_safe_and_distinct():
    archs = all_distinct_archs()
    ids = [a.arch_id for a in archs]
    assert len(set(ids)) == len(ids)
    for arch_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,24}", arch_id), arch_id
    # The same architecture given in other input forms has the same id.
    same = ArchConfig(widths=[40, 80, 160, 320], depths=[1, 2, 8, 2], n_divs=[4.0] * 4,
                      mlp_ratios=[2] * 4, kernel_sizes=[3] * 4, act="GELU")
    assert same.arch_id == T0.arch_id


def test_arch_id_stable_in_fresh_process():
    archs = all_distinct_archs()
    code = ("import numpy as np, sys\n"
            "sys.path.insert(0, 'tests')\n"
            "from test_arch import all_distinct_archs\n"
            "print(' '.join(a.arch_id for a in all_distinct_archs()))\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == [a.arch_id for a in archs]


def test_str_is_a_readable_one_liner():
    s = str(T0)
    assert "\n" not in s and len(s) < 160
    for fragment in ("40/80/160/320", "1/2/8/2", "gelu", "1280"):
        assert fragment in s
    odd = ArchConfig(**kw(n_divs=(2, 4, 8, 16), kernel_sizes=(3, 5, 3, 5)))
    assert "2/4/8/16" in str(odd) and "3/5/3/5" in str(odd)
    strings = {str(a) for a in all_distinct_archs()}
    assert len(strings) == len(all_distinct_archs())
