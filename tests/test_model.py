"""build_model: weight compatibility with timm's FasterNet, timm's model API, arbitrary
per-stage archs, and the parameter/FLOP counts of the presets (paper, Table 5)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from search_space import PRESETS, ArchConfig, PConvFasterNet, SearchSpace, build_model, count_params
from search_space.flops import params_and_flops
from search_space.model import PartialConv

pytestmark = pytest.mark.usefixtures("one_thread")

# Chen et al., CVPR 2023 (arXiv 2303.03667), Table 5: params (M) and FLOPs (G) at 224x224.
PUBLISHED = {
    "fasternet_t0": (3.9, 0.34),
    "fasternet_t1": (7.6, 0.85),
    "fasternet_t2": (15.0, 1.90),
    "fasternet_s": (31.1, 4.55),
    "fasternet_m": (53.5, 8.72),
    "fasternet_l": (93.4, 15.49),
}
FLOP_SLOW = ("fasternet_s", "fasternet_m", "fasternet_l")  # fvcore traces these for seconds each


def test_presets_are_the_papers_configs():
    expected = {  # embed_dim, depths, act (official cfg/fasternet_*.yaml)
        "fasternet_t0": (40, (1, 2, 8, 2), "gelu"),
        "fasternet_t1": (64, (1, 2, 8, 2), "gelu"),
        "fasternet_t2": (96, (1, 2, 8, 2), "relu"),
        "fasternet_s": (128, (1, 2, 13, 2), "relu"),
        "fasternet_m": (144, (3, 4, 18, 3), "relu"),
        "fasternet_l": (192, (3, 4, 18, 3), "relu"),
    }
    assert set(PRESETS) == set(expected)
    for name, (e, depths, act) in expected.items():
        assert PRESETS[name] == ArchConfig(
            widths=(e, 2 * e, 4 * e, 8 * e), depths=depths, n_divs=(4,) * 4, mlp_ratios=(2,) * 4,
            kernel_sizes=(3,) * 4, act=act, feature_dim=1280, patch_size=4, merge_size=2), name


@torch.no_grad()
def test_state_dict_loads_into_timm_and_logits_match(preset_224, randomize):
    ours = randomize(build_model(PRESETS[preset_224]), seed=1).eval()
    theirs = timm.create_model(preset_224, pretrained=False)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()
    # ... and the reverse direction is just as strict.
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    logits = ours(x)
    assert logits.shape == (2, 1000)
    assert logits.std() > 0.1, "logits too small for the comparison to mean anything"
    torch.testing.assert_close(logits, theirs(x), atol=1e-5, rtol=1e-5)
    feats = ours.forward_features(x)
    torch.testing.assert_close(feats, theirs.forward_features(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.forward_head(feats, pre_logits=True),
                               theirs.forward_head(feats, pre_logits=True), atol=1e-5, rtol=1e-5)


def test_drop_path_rates_match_timm():
    ours = build_model(PRESETS["fasternet_t0"], drop_path_rate=0.2)
    theirs = timm.create_model("fasternet_t0", drop_path_rate=0.2)
    probs = [m.drop_prob for m in ours.modules() if isinstance(m, timm.layers.DropPath)]
    assert len(probs) == sum(PRESETS["fasternet_t0"].depths) - 1  # the first block's rate is 0
    assert probs[-1] == pytest.approx(0.2)
    assert probs == [m.drop_prob for m in theirs.modules() if isinstance(m, timm.layers.DropPath)]


# ---------------------------------------------------------------------------- timm API
@torch.no_grad()
def test_timm_model_api(randomize):
    arch = PRESETS["fasternet_t0"]
    model = randomize(build_model(arch, num_classes=10)).eval()
    x = torch.randn(2, 3, 96, 96)
    logits = model(x)
    assert logits.shape == (2, 10)

    feats = model.forward_features(x)
    assert feats.shape == (2, 320, 3, 3)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, arch.feature_dim)
    torch.testing.assert_close(model.get_classifier()(pre), logits)
    torch.testing.assert_close(model.forward_head(feats), logits)

    assert [f["num_chs"] for f in model.feature_info] == [40, 80, 160, 320]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    for info in model.feature_info:
        model.get_submodule(info["module"])  # names a real module

    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, feats)
    assert len(inter) == 4
    for t, info in zip(inter, model.feature_info):
        assert t.shape == (2, info["num_chs"], 96 // info["reduction"], 96 // info["reduction"])
    picked = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert [t.shape[1] for t in picked] == [80, 320]
    torch.testing.assert_close(picked[0], inter[1])
    _, early = model.forward_intermediates(x, indices=2, stop_early=True)  # last two stages
    assert [t.shape[1] for t in early] == [160, 320]
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")

    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), logits)

    model.reset_classifier(num_classes=7)
    assert model.num_classes == 7 and model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, arch.feature_dim)


def test_build_model_rejects_non_arch():
    with pytest.raises(TypeError, match="ArchConfig"):
        build_model({"embed_dim": 40, "depths": [1, 2, 8, 2]})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- arbitrary archs
def test_odd_arch_builds_and_trains(odd_arch, randomize):
    arch, res = odd_arch
    torch.manual_seed(0)
    model = randomize(build_model(arch, num_classes=5, drop_path_rate=0.1))
    assert isinstance(model, PConvFasterNet) and len(model.stages) == arch.num_stages
    for i, stage in enumerate(model.stages):
        for block in stage.blocks:
            dc = arch.widths[i] // arch.n_divs[i]
            k = arch.kernel_sizes[i]
            assert block.spatial_mixing.partial_conv3.weight.shape == (dc, dc, k, k)
            assert block.mlp[0].out_channels == int(arch.widths[i] * arch.mlp_ratios[i])
    x = torch.randn(2, 3, res, res)
    feats = model.forward_features(x)
    side = res // arch.patch_size
    for _ in range(arch.num_stages - 1):
        side //= arch.merge_size
    assert feats.shape == (2, arch.widths[-1], side, side)
    out = model.forward_head(feats)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.stages[0].parameters())


def test_one_channel_input():
    arch = ArchConfig(widths=(16, 24, 40), depths=(1, 1, 1), n_divs=(2, 4, 8), mlp_ratios=(2, 2, 2),
                      kernel_sizes=(5, 3, 3), feature_dim=32)
    model = build_model(arch, num_classes=10, in_chans=1)
    assert model.patch_embed.proj.in_channels == 1
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    out.sum().backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_partial_conv_touches_only_its_channels():
    pconv = PartialConv(dim=16, n_div=4, kernel_size=5)
    x = torch.randn(2, 16, 9, 9)
    y = pconv(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, 4:], x[:, 4:], atol=0, rtol=0)
    assert not torch.allclose(y[:, :4], x[:, :4])


# ---------------------------------------------------------------------------- counts
def test_published_params(preset):
    params_m = count_params(PRESETS[preset]) / 1e6
    assert params_m == pytest.approx(PUBLISHED[preset][0], rel=0.01)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in FLOP_SLOW else n
                                  for n in PUBLISHED])
def test_published_params_and_flops(name):
    c = params_and_flops(PRESETS[name], 224)
    params_m, flops_g = PUBLISHED[name]
    assert c.params_m == pytest.approx(params_m, rel=0.01)
    assert c.flops_g == pytest.approx(flops_g, rel=0.01)


def test_flops_scale_with_resolution():
    arch = PRESETS["fasternet_t0"]
    small, big = params_and_flops(arch, 112), params_and_flops(arch, 224)
    assert small.params_m == big.params_m
    # Everything but the head scales with the pixel count; the head is ~1% of T0's FLOPs.
    assert big.flops_g / small.flops_g == pytest.approx(4, rel=0.03)


def n_params(arch: ArchConfig, **kwargs) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return sum(p.numel() for p in build_model(arch, **kwargs).parameters())


@pytest.mark.parametrize("num_classes, in_chans", [(1000, 3), (0, 1)])
def test_count_params_matches_built_model(preset, num_classes, in_chans):
    arch = PRESETS[preset]
    assert count_params(arch, num_classes, in_chans) == n_params(arch, num_classes=num_classes,
                                                                 in_chans=in_chans)


VARIANTS = [(1000, 3), (10, 1), (0, 2)]  # (num_classes, in_chans)


def test_count_params_matches_odd_archs(odd_arch):
    for num_classes, in_chans in VARIANTS:
        assert count_params(odd_arch[0], num_classes, in_chans) == n_params(
            odd_arch[0], num_classes=num_classes, in_chans=in_chans)


def test_count_params_matches_sampled_archs():
    rng = np.random.default_rng(3)
    space = SearchSpace.default()
    for i in range(6):
        arch = space.sample(rng)
        num_classes, in_chans = VARIANTS[i % len(VARIANTS)]
        assert count_params(arch, num_classes, in_chans) == n_params(
            arch, num_classes=num_classes, in_chans=in_chans), arch
