"""fuse: the deployment form gives the training form's eval logits (BN folded, no split/cat,
shortcut fused into a GEMM), leaves its input and the original model alone, has no BN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from search_space import PRESETS, FusedFasterNet, SearchSpace, build_model, fuse

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(atol=1e-4, rtol=1e-4)


def check_fused_matches(model: nn.Module, x: torch.Tensor) -> FusedFasterNet:
    """Fuse `model` and compare logits, features and pre-logits on `x` (and on its batch-1 slice)."""
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    assert isinstance(fused, FusedFasterNet)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    for xb in (x, x[:1].clone()):
        x_copy = xb.clone()
        with torch.no_grad():
            expected = model(xb)
            got = fused(xb)
            assert got.shape == expected.shape
            assert expected.std() > 0.1, "logits too small for the comparison to mean anything"
            torch.testing.assert_close(got, expected, **TOL)
            feats = fused.forward_features(xb)
            torch.testing.assert_close(feats, model.forward_features(xb), **TOL)
            torch.testing.assert_close(fused.forward_head(feats, pre_logits=True),
                                       model.forward_head(feats, pre_logits=True), **TOL)
        torch.testing.assert_close(xb, x_copy, atol=0, rtol=0, msg="fused forward changed its input")
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, atol=0, rtol=0, msg=f"fuse changed {k}")
    return fused


@pytest.mark.parametrize("name", ["fasternet_t0", "fasternet_t1", "fasternet_t2"])
def test_fused_presets_match(name, randomize):
    model = randomize(build_model(PRESETS[name]), seed=2)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    check_fused_matches(model, x)


@pytest.mark.parametrize("seed", range(4))
def test_fused_sampled_archs_match(seed, randomize):
    arch = SearchSpace.default().sample(np.random.default_rng(seed))
    model = randomize(build_model(arch, num_classes=17), seed=seed)
    check_fused_matches(model, torch.randn(3, 3, 96, 96))


def test_fused_odd_archs_match(odd_arch, randomize):
    arch, res = odd_arch
    model = randomize(build_model(arch, num_classes=5, in_chans=1), seed=3)
    check_fused_matches(model, torch.randn(3, 1, res, res))


def test_fused_non_contiguous_input(randomize):
    model = randomize(build_model(PRESETS["fasternet_t0"], num_classes=10)).eval()
    x = torch.randn(3, 64, 64, 3).permute(0, 3, 1, 2)  # channels-last memory, NCHW shape
    x_copy = x.clone()
    with torch.no_grad():
        torch.testing.assert_close(fuse(model)(x), model(x), **TOL)
    torch.testing.assert_close(x, x_copy, atol=0, rtol=0)


def test_fused_max_pool_head(randomize):
    model = randomize(build_model(PRESETS["fasternet_t0"], num_classes=10, global_pool="max"))
    check_fused_matches(model, torch.randn(3, 3, 64, 64))


def test_fuse_uses_running_stats_and_keeps_training_mode(randomize):
    model = randomize(build_model(PRESETS["fasternet_t0"], num_classes=10)).train()
    fused = fuse(model)
    assert model.training and not fused.training
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model.eval()(x), **TOL)


def test_fused_model_is_independent_of_the_original(randomize):
    model = randomize(build_model(PRESETS["fasternet_t0"], num_classes=10)).eval()
    fused = fuse(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = fused(x).clone()
        for p in model.parameters():
            p.mul_(-1.0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(1.0)
        torch.testing.assert_close(fused(x), expected, atol=0, rtol=0)


def test_fuse_rejects_other_models():
    with pytest.raises(TypeError, match="PConvFasterNet"):
        fuse(nn.Sequential(nn.Conv2d(3, 8, 3)))  # type: ignore[arg-type]
