"""Device plumbing of the proxies: device strings, precision, determinism settings, the
dataset moved once, out-of-memory as a failed candidate (injected), configuration errors
raised at construction, and (marker `gpu`) the same on a real CUDA device."""

from __future__ import annotations

import os

import pytest
import torch

import proxies.device as device_module
from proxies import ShortTrain, ZeroCost, load_dataset
from proxies.device import DeviceError, determinism, resolve_device, resolve_precision, torch_settings
from proxies.short_train import crop_flip
from search_space import ArchConfig

SMALL = ArchConfig(widths=(8, 16, 16, 24), depths=(1, 1, 1, 1), n_divs=(2, 2, 2, 2),
                   mlp_ratios=(2, 2, 2, 2), kernel_sizes=(3, 3, 3, 3), feature_dim=32)


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine that reports two CUDA devices with bf16 (nothing is ever run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_and_auto_without_cuda(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:1", "auto:0", "cuda:-1", ""])
def test_malformed_device_is_a_one_line_error(spec):
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    assert "\n" not in str(e.value) and repr(spec) in str(e.value)


def test_cuda_asked_but_absent(no_cuda):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        ShortTrain(dataset="fashion-mnist", budget="smoke", device="cuda:0")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        ZeroCost("snip", dataset="fashion-mnist", budget="smoke", device="cuda")


def test_cuda_index_and_auto_with_cuda(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_precision(fake_cuda, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("auto", cuda) == torch.bfloat16
    assert resolve_precision("fp16", cuda) == torch.float16
    assert resolve_precision("fp32", cuda) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == torch.float16
    with pytest.raises(DeviceError, match="bf16"):
        resolve_precision("bf16", cuda)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cpu)


def test_budget_precision_and_augment_fields():
    from proxies import Budget

    b = Budget.parse("quick,precision=fp16,augment=true")
    assert b.precision == "fp16" and b.augment is True
    with pytest.raises(ValueError, match="precision"):
        Budget.parse("quick,precision=fp8")
    with pytest.raises(ValueError, match="augment"):
        Budget.parse("quick,augment=maybe")
    # The replay caches are keyed by the repr: default-valued new fields stay out of it.
    assert "augment" not in repr(Budget()) and "augment=True" in repr(b)


def test_torch_settings_restore_and_cuda_determinism_setup(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.deterministic)
    with torch_settings(1, True, torch.device("cuda", 0)):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == device_module._CUBLAS_WORKSPACE
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.deterministic) == before
    with torch_settings(1, True, torch.device("cpu")):
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert determinism(torch.device("cpu")) == "exact"
    assert determinism(torch.device("cuda", 0)) == "best-effort"
    assert determinism(torch.device("cpu"), deterministic=False) == "off"


def test_result_says_where_it_ran(data):
    r = ShortTrain(dataset=data, budget="smoke", seed=0, device="cpu")(SMALL)
    assert (r.device, r.determinism, r.precision) == ("cpu", "exact", "fp32")
    z = ZeroCost("snip", dataset=data, budget="smoke", device="cpu")(SMALL)
    assert not z.failed and z.device == "cpu"


def test_dataset_moves_once(data):
    assert data.to("cpu") is data
    proxy = ShortTrain(dataset=data, budget="smoke", device="cpu")
    assert proxy.dataset is data


def test_injected_out_of_memory_fails_only_that_candidate(data, monkeypatch):
    proxy = ShortTrain(dataset=data, budget="smoke,steps=4", seed=0, device="cpu")
    calls = {"n": 0}
    real = torch.nn.Module.__call__

    def flaky(self, *args, **kwargs):  # the network's forward on the 2nd training batch
        if self.__class__.__name__ == "PConvFasterNet":
            calls["n"] += 1
            if calls["n"] == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", flaky)
    r = proxy(SMALL)
    assert r.failed and r.reason == "out of memory at batch 2 on cpu"
    assert r.score == float("-inf") and r.accuracy is None
    monkeypatch.setattr(torch.nn.Module, "__call__", real)
    again = proxy(SMALL)  # the next candidate runs normally
    assert not again.failed and again.accuracy is not None


def test_crop_flip_is_seeded_and_shifts_within_padding():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.uint8).reshape(2, 1, 8, 8) + 1
    a = crop_flip(x, torch.Generator().manual_seed(0))
    b = crop_flip(x, torch.Generator().manual_seed(0))
    c = crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, c)
    for img, src in zip(a, x):
        # Every non-zero pixel is one of the source image's (zeros are the padding) ...
        values = set(img[img > 0].tolist())
        assert values <= set(src.flatten().tolist())
        # ... and a row of the crop is a (possibly flipped) run of a source row.
        row = [v for v in img[0, 4].tolist() if v > 0]
        src_rows = [r.tolist() for r in src[0]]
        assert any(_is_run(row, r) or _is_run(row[::-1], r) for r in src_rows) or not row


def _is_run(part: list[int], row: list[int]) -> bool:
    n = len(part)
    return any(row[i: i + n] == part for i in range(len(row) - n + 1))


def test_crop_flip_flips_some_images():
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, :, :4] = 255  # left half bright
    out = crop_flip(x, torch.Generator().manual_seed(0))
    right_brighter = (out[..., 4:].float().mean((1, 2, 3)) > out[..., :4].float().mean((1, 2, 3)))
    assert 10 < int(right_brighter.sum()) < 54


# ---------------------------------------------------------------------- real GPU
@pytest.mark.gpu
def test_short_train_on_cuda(data):
    proxy = ShortTrain(dataset=data, budget="smoke,steps=8", seed=0, device="cuda")
    assert proxy.dataset.device.type == "cuda"
    a, b = proxy(SMALL), proxy(SMALL)
    assert not a.failed and a.device.startswith("cuda:0") and a.determinism == "best-effort"
    assert a.precision in ("bf16", "fp16")
    assert abs(a.accuracy - b.accuracy) <= 0.02  # best-effort determinism on CUDA
    cpu = ShortTrain(dataset=data, budget="smoke,steps=8", seed=0, device="cpu")(SMALL)
    assert abs(a.accuracy - cpu.accuracy) <= 0.1  # the same experiment, other arithmetic


@pytest.mark.gpu
def test_zero_cost_on_cuda(data):
    for name in ("synflow", "naswot", "grad_norm", "snip"):
        r = ZeroCost(name, dataset=data, budget="smoke", device="cuda")(SMALL)
        assert not r.failed, r.reason


@pytest.mark.gpu
def test_real_out_of_memory_is_a_failed_candidate(data):
    huge = ArchConfig(widths=(512, 1024, 2048, 4096), depths=(3, 4, 12, 3), n_divs=(2,) * 4,
                      mlp_ratios=(4,) * 4, kernel_sizes=(7,) * 4, feature_dim=4096)
    proxy = ShortTrain(dataset=data, budget="smoke,batch_size=4096,resolution=224", device="cuda")
    r = proxy(huge)
    assert r.failed and r.reason.startswith("out of memory"), r.reason
    assert not proxy(SMALL).failed


def test_validate_takes_a_device(no_cuda, capsys):
    from proxies.__main__ import main

    assert main(["validate", "--n", "3", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and len(err.strip().splitlines()) == 1
