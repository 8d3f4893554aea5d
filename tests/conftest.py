"""Shared fixtures: registry-driven parametrization and weight randomization.

Fixture names that `pytest_generate_tests` fills in (unless a test parametrizes them itself):
- `preset`: every name in `PRESETS` (cheap tests: files, counts, ids).
- `preset_224`: every preset, run as a network at 224x224; S/M/L carry the `slow` marker.
- `odd_arch`: (arch, resolution) pairs far from the presets (per-stage knobs, 5x5/7x7 PConv,
  n_div 1 and 16, non-doubling and odd widths, 1 and 3 stages, merge strides that leave a
  remainder).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from search_space import PRESETS, ArchConfig

FAST_PRESETS = ("fasternet_t0", "fasternet_t1", "fasternet_t2")

# The searches of the suite use the shipped `amd-epyc` table on whatever machine runs the
# suite (CI's is not that EPYC): they trust it without timing its probes, as --trust-table
# does (subprocesses inherit it). tests/test_table_trust.py unsets it and checks the timing.
os.environ.setdefault("PCONV_NAS_TRUST_TABLES", "1")

ODD_ARCHS: dict[str, tuple[ArchConfig, int]] = {
    "k5-ndiv16-nondoubling": (ArchConfig(
        widths=(32, 48, 96, 112), depths=(1, 1, 2, 1), n_divs=(16, 16, 16, 16),
        mlp_ratios=(2, 1.5, 3, 2), kernel_sizes=(5, 5, 3, 7), act="relu", feature_dim=64), 64),
    "odd-widths-gelu": (ArchConfig(
        widths=(7, 13, 29, 31), depths=(2, 1, 1, 2), n_divs=(4, 3, 2, 5),
        mlp_ratios=(2.5, 2, 1.5, 1), kernel_sizes=(3, 5, 3, 3), act="gelu", feature_dim=100), 64),
    "three-stages": (ArchConfig(
        widths=(16, 24, 40), depths=(2, 1, 1), n_divs=(2, 4, 8), mlp_ratios=(2, 2, 2),
        kernel_sizes=(3, 3, 5), act="relu", feature_dim=32), 32),
    "one-stage-ndiv1-k1": (ArchConfig(
        widths=(12,), depths=(2,), n_divs=(1,), mlp_ratios=(1,), kernel_sizes=(1,),
        feature_dim=16, patch_size=2), 16),
    # 64 -> 32 -> 10 -> 3 -> 1: every merge drops a remainder row/column.
    "patch2-merge3": (ArchConfig(
        widths=(8, 16, 24, 32), depths=(1, 1, 1, 1), n_divs=(8, 2, 3, 4), mlp_ratios=(2, 2, 2, 2),
        kernel_sizes=(3, 3, 3, 3), feature_dim=24, patch_size=2, merge_size=3), 64),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, with the reason, on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device (torch {torch.__version__} sees none)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def _wants(metafunc: pytest.Metafunc, name: str) -> bool:
    """The test takes `name` and does not parametrize it itself."""
    explicit = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        explicit.update(n.strip() for n in (names.split(",") if isinstance(names, str) else names))
    return name in metafunc.fixturenames and name not in explicit


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _wants(metafunc, "preset"):
        metafunc.parametrize("preset", list(PRESETS))
    if _wants(metafunc, "preset_224"):
        metafunc.parametrize("preset_224", [
            pytest.param(name, marks=() if name in FAST_PRESETS else pytest.mark.slow)
            for name in PRESETS])
    if _wants(metafunc, "odd_arch"):
        metafunc.parametrize("odd_arch", list(ODD_ARCHS.values()), ids=list(ODD_ARCHS))


@torch.no_grad()
def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine, weights at 1/sqrt(fan_in) scale.

    The builder's init (std 0.02, BN at identity) gives near-zero logits and BN that does
    nothing, so weight-transfer and BN-folding bugs would hide inside any tolerance. Each
    block's residual branch is damped (last conv x0.25): eval-mode BN does not renormalize,
    so full-scale branches would grow the activations geometrically with depth.
    """
    from latency_tables.deploy import check_weights

    return check_weights(model, seed, min_var=1e-4)


@pytest.fixture
def randomize():
    """`randomize(model, seed=0)`: see `_randomize`."""
    return _randomize


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (use with `pytestmark = usefixtures("one_thread")`).

    Test inputs are small; one thread avoids OpenMP spin-waits on a shared, busy machine (two
    threads there made some forwards 30x slower). Restored afterwards, so modules that time
    things keep their own setting.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy_estimate():
    """``toy_estimate(budget)``: an estimate model fitted on synthetic rows for
    fashion-mnist at `budget` (what the registry-driven proxy tests need; the real one is
    fitted on a reference set)."""
    from proxies import Budget
    from proxies.estimate import FEATURES, fit

    def make(budget: str = "smoke"):
        rng = np.random.default_rng(0)
        rows = []
        for i in range(12):
            row = {f: float(rng.normal()) for f in FEATURES}
            row.update(arch_id=f"toy{i}", reference=88 + row["log_params"] + 0.1 * rng.normal())
            rows.append(row)
        return fit(rows, dataset="fashion-mnist", budget=Budget.parse(budget), seed=0,
                   protocol="toy", source="synthetic rows")

    return make


@pytest.fixture(scope="session", autouse=True)
def _session_preset_cache(tmp_path_factory):
    """The preset cache (`optimize.cache`) of searches started by module-wide fixtures: a
    temporary folder, never the user's ~/.cache (inherited by the subprocesses)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PCONV_NAS_CACHE", str(tmp_path_factory.mktemp("preset-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _preset_cache(tmp_path_factory, monkeypatch):
    """Each test its own empty preset cache: test proxies of one name score differently."""
    monkeypatch.setenv("PCONV_NAS_CACHE", str(tmp_path_factory.mktemp("preset-cache")))
