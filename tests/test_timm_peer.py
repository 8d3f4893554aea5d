"""timm's model-test contract (pytorch-image-models `tests/test_models.py`) for `pconv_fasternet`.

The same checks timm runs on its own models, rewritten against our registration so they run
without timm's test tree and without downloads: forward/backward, default cfg, features_only
(hooks, `forward_intermediates` getter, FX), `prune_intermediate_layers`, TorchScript of the
model and of its FX graph, and `device=`/`dtype=` factory kwargs. Each scripted or traced
model is compared with eager logits, not just run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import set_layer_config
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import search_space  # noqa: F401  (registers pconv_fasternet)
from search_space import ArchConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# Per-stage knobs away from the presets (5x5 PConv, n_div 2..8, relu); the state_dict golden
# file below was written from this architecture before the model was made scriptable.
ODD = ArchConfig(widths=(16, 24, 48, 64), depths=(1, 1, 2, 1), n_divs=(2, 4, 4, 8),
                 mlp_ratios=(2, 2, 1.5, 2), kernel_sizes=(3, 5, 3, 3), act="relu", feature_dim=96)
THREE = ArchConfig(widths=(16, 24, 40), depths=(2, 1, 1), n_divs=(2, 4, 8), mlp_ratios=(2, 2, 2),
                   kernel_sizes=(3, 3, 5), act="gelu", feature_dim=32)
ARCHS = {"odd": ODD, "three-stages": THREE, "fasternet_t0": "fasternet_t0"}
GOLDEN_KEYS = Path(__file__).parent / "golden" / "pconv_fasternet_state_dict.txt"
SIZE = 64  # px; every stage keeps >= 2x2 at the 32x reduction of four stages


def make(arch, randomize=None, **kwargs):
    model = timm.create_model("pconv_fasternet", arch=arch, **kwargs).eval()
    return randomize(model) if randomize else model


def images(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_state_dict_keys_unchanged():
    model = make(ODD, num_classes=10)
    keys = [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]
    assert keys == GOLDEN_KEYS.read_text().splitlines()


@pytest.mark.parametrize("preset", ["fasternet_t0", "fasternet_t1"])
def test_weights_move_to_timms_fasternet(preset, randomize):
    ours = make(preset, randomize)
    theirs = timm.create_model(preset).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = images()
    if preset == "fasternet_t0":  # timm's t0 uses GELU like ours; t1 and up match by keys only
        torch.testing.assert_close(theirs(x), ours(x))


@pytest.mark.parametrize("name", list(ARCHS))
def test_torchscript_gives_eager_logits(name, randomize):
    with set_layer_config(scriptable=True):
        model = make(ARCHS[name], randomize, num_classes=10)
    scripted = torch.jit.script(model)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_torchscript_ignores_grad_checkpointing():
    model = make(ODD, num_classes=10)
    model.set_grad_checkpointing()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_grad_checkpointing_keeps_output_and_gradients():
    model = make(ODD, num_classes=10).train()
    x = images()
    torch.manual_seed(0)
    plain = model(x)
    model.set_grad_checkpointing()
    torch.manual_seed(0)
    checkpointed = model(x)
    torch.testing.assert_close(checkpointed, plain)
    checkpointed.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def _fx_logits_model(model: torch.nn.Module) -> torch.nn.Module:
    """timm's `_create_fx_model`: the traced graph returning the last node (the logits)."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, eval_return_nodes=[eval_nodes[-1]],
                                    train_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize("name", ["odd", "three-stages"])
def test_fx_trace_and_its_torchscript_give_eager_logits(name, randomize):
    with set_layer_config(scriptable=True):
        model = make(ARCHS[name], randomize, num_classes=10)
    fx = _fx_logits_model(model)
    x = images()
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(next(iter(fx(x).values())), logits)
        torch.testing.assert_close(next(iter(torch.jit.script(fx)(x).values())), logits)


def _trunk_weights(full: torch.nn.Module, feats: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`full`'s weights under the feature net's names (`stages_0.` for `stages.0.`, a wrapper prefix)."""
    ours = full.state_dict()
    out = {}
    for key in feats.state_dict():
        name = key.removeprefix("model.").removeprefix("graph_module.")
        out[key] = ours[re.sub(r"^stages_(\d+)\.", r"stages.\1.", name)]
    return out


@pytest.mark.parametrize("feature_cls", ["list", "hook", "getter", "fx"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_features_only_every_feature_class(name, feature_cls, randomize):
    arch = search_space.resolve_arch(ARCHS[name])
    full = make(arch, randomize)
    feats = make(arch, features_only=True, feature_cls=feature_cls)
    feats.load_state_dict(_trunk_weights(full, feats), strict=True)
    assert feats.feature_info.channels() == list(arch.widths)
    assert feats.feature_info.reduction() == list(arch.strides)
    x = images()
    with torch.no_grad():
        out = feats(x)
        _, expected = full.forward_intermediates(x)
    assert len(out) == arch.num_stages
    for got, want, r in zip(out, expected, arch.strides):
        assert got.shape[-1] <= -(-SIZE // r)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", list(ARCHS))
def test_forward_intermediates(name, randomize):
    model = make(ARCHS[name], randomize)
    n = len(model.feature_info)
    x = images()
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape[1] for t in taps] == [f["num_chs"] for f in model.feature_info]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last_two] == [t.shape for t in taps[-2:]]
        for i in range(n):
            early = model.forward_intermediates(x, indices=[i], stop_early=True,
                                                intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", list(ARCHS))
def test_prune_intermediate_layers(name, randomize):
    model = make(ARCHS[name], randomize)
    x = images()
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        last = len(taps) - 1
        for i in range(last + 1):
            pruned = make(ARCHS[name], randomize)
            take = pruned.prune_intermediate_layers([i])
            torch.testing.assert_close(pruned.forward_intermediates(x, indices=take,
                                                                    intermediates_only=True)[0], taps[i])
            torch.testing.assert_close(pruned.forward_features(x), taps[i])
            torch.testing.assert_close(pruned(x), taps[i])  # head and pooling pruned
        kept = make(ARCHS[name], randomize)
        kept.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(kept(x), model(x))


def test_backward_reaches_every_parameter():
    model = make(ODD, num_classes=42).train()
    out = model(images())
    out.mean().backward()
    assert out.shape == (2, 42)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_default_cfg_matches_the_model():
    model = make("fasternet_t0", device="meta")
    cfg = model.pretrained_cfg
    assert model.default_cfg == cfg
    assert cfg["architecture"] == "pconv_fasternet" and cfg["num_classes"] == model.num_classes
    assert model.in_chans == cfg["input_size"][0]
    keys = model.state_dict().keys()
    assert f"{cfg['first_conv']}.weight" in keys and f"{cfg['classifier']}.weight" in keys
    x = torch.empty(1, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)
    assert tuple(feats.shape[1:]) == (model.num_features, *cfg["pool_size"])
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == (1, model.head_hidden_size)
    model.reset_classifier(0, "")
    assert tuple(model(x).shape[2:]) == cfg["pool_size"]  # pooling off: an unpooled map


def test_factory_device_and_dtype():
    model = make(ODD, device="meta", dtype=torch.float64)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert {t.device.type for _, t in tensors} == {"meta"}
    assert {t.dtype for _, t in tensors if t.is_floating_point()} == {torch.float64}
    model.train()
    model.reset_classifier(3)
    assert model.classifier.weight.dtype == torch.float64 and model.classifier.weight.is_meta
    assert all(m.training for m in model.modules())
    with pytest.raises(TypeError):
        make(ODD, device="meta", not_a_model_arg=1)
