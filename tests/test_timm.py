"""timm registration: `timm.create_model('pconv_fasternet', arch=...)` after `import search_space`."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import search_space  # noqa: F401  (registers pconv_fasternet)
from search_space import PRESETS, ArchConfig, PConvFasterNet

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ArchConfig(widths=(16, 24, 48, 64), depths=(1, 1, 2, 1), n_divs=(2, 4, 4, 8),
                   mlp_ratios=(2, 2, 1.5, 2), kernel_sizes=(3, 5, 3, 3), act="relu", feature_dim=96)


def arch_forms(tmp_path: Path) -> dict[str, object]:
    return {
        "yaml-str": str(SMALL.save(tmp_path / "small.yaml")),
        "json-path": SMALL.save(tmp_path / "small.json"),
        "archconfig": SMALL,
        "dict": SMALL.to_dict(),
    }


def test_registered():
    assert "pconv_fasternet" in timm.list_models("pconv_*")


@pytest.mark.parametrize("form", ["yaml-str", "json-path", "archconfig", "dict"])
def test_create_model_from_any_arch_form(form, tmp_path):
    model = timm.create_model("pconv_fasternet", arch=arch_forms(tmp_path)[form], num_classes=10)
    assert isinstance(model, PConvFasterNet) and model.arch == SMALL
    assert model.num_classes == 10
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_create_model_from_preset_name():
    model = timm.create_model("pconv_fasternet", arch="fasternet_t1", num_classes=10)
    assert model.arch == PRESETS["fasternet_t1"]
    ref = timm.create_model("fasternet_t1", num_classes=10)
    assert model.state_dict().keys() == ref.state_dict().keys()
    assert all(v.shape == ref.state_dict()[k].shape for k, v in model.state_dict().items())


def test_create_model_kwargs_pass_through():
    model = timm.create_model("pconv_fasternet", arch=SMALL, num_classes=3, in_chans=1,
                              drop_path_rate=0.1)
    assert model.patch_embed.proj.in_channels == 1
    assert any(isinstance(m, timm.layers.DropPath) for m in model.modules())
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    cfg = model.pretrained_cfg
    model.get_submodule(cfg["first_conv"])
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


def test_features_only():
    model = timm.create_model("pconv_fasternet", arch="fasternet_t0", features_only=True)
    assert model.feature_info.channels() == [40, 80, 160, 320]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 16, 16), (2, 80, 8, 8), (2, 160, 4, 4),
                                               (2, 320, 2, 2)]
    picked = timm.create_model("pconv_fasternet", arch=SMALL, features_only=True, out_indices=(1, 3))
    assert [f.shape[1] for f in picked(torch.randn(1, 3, 64, 64))] == [24, 64]


def test_features_only_follows_the_stage_count():
    three = ArchConfig(widths=(16, 24, 40), depths=(1, 1, 1), n_divs=(4,) * 3, mlp_ratios=(2,) * 3,
                       kernel_sizes=(3,) * 3, feature_dim=32)
    feats = timm.create_model("pconv_fasternet", arch=three, features_only=True)(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 16, 16), (24, 8, 8), (40, 4, 4)]


def test_pretrained_raises_clear_error():
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("pconv_fasternet", arch="fasternet_t0", pretrained=True)


@pytest.mark.parametrize("arch, fragment", [
    ("fasternet_xxl", "fasternet_xxl"),
    ("no/such/file.yaml", "file.yaml"),
    (42, "int"),
    ({"embed_dim": 40, "depths": [1, 2, 8, 2], "n_divs": 4}, "n_divs"),
])
def test_bad_arch_arguments(arch, fragment):
    with pytest.raises(ValueError) as excinfo:
        timm.create_model("pconv_fasternet", arch=arch)
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)
