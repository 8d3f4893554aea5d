"""SearchSpace: the shipped spaces, seeded sampling, Optuna suggestion, size, constraints and
bad space files."""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from search_space import (
    DEFAULT_SPACE_PATH,
    PRESETS,
    ArchConfig,
    ArchError,
    ConstraintInfeasible,
    SearchSpace,
    count_params,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GLOBAL_SPACE_PATH = Path(DEFAULT_SPACE_PATH).with_name("timm_global.yaml")
SPACE_FILES = {"default": DEFAULT_SPACE_PATH, "timm_global": GLOBAL_SPACE_PATH}
DEFAULTS = {"n_divs": [4], "mlp_ratios": [2], "kernel_sizes": [3], "act": ["gelu"],
            "feature_dim": [1280], "patch_size": [4], "merge_size": [2]}

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module", params=list(SPACE_FILES))
def shipped(request):
    """(space, raw YAML data) for each shipped space file."""
    path = SPACE_FILES[request.param]
    return SearchSpace.from_file(path), yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def default_space():
    return SearchSpace.default()


def stage_choices(data: dict, key: str, i: int) -> list:
    """Choices of a per-stage knob for stage i, read straight from the raw YAML."""
    raw = data.get(key, DEFAULTS.get(key))
    return raw[i] if isinstance(raw[0], list) else raw


def yaml_allows(data: dict, arch: ArchConfig) -> bool:
    """Independent reading of a space file: is every knob of `arch` among the listed choices?"""
    n = data["stages"]
    if arch.num_stages != n:
        return False
    widths = data["widths"]
    if isinstance(widths, dict):
        if not any(all(arch.widths[i] == e * s for i, s in enumerate(widths["scale"]))
                   for e in widths["embed_dim"]):
            return False
    elif any(arch.widths[i] not in widths[i] for i in range(n)):
        return False
    for key in ("depths", "n_divs", "mlp_ratios", "kernel_sizes"):
        values = getattr(arch, key)
        if any(values[i] not in stage_choices(data, key, i) for i in range(n)):
            return False
        if key in (data.get("tie") or []) and len(set(values)) != 1:
            return False
    return all(getattr(arch, key) in (data.get(key) or DEFAULTS[key])
               for key in ("act", "feature_dim", "patch_size", "merge_size"))


def yaml_size(data: dict) -> int:
    """Product of the choice counts, read straight from the raw YAML."""
    n, tie = data["stages"], set(data.get("tie") or [])
    widths = data["widths"]
    size = len(widths["embed_dim"]) if isinstance(widths, dict) else math.prod(len(w) for w in widths)
    for key in ("depths", "n_divs", "mlp_ratios", "kernel_sizes"):
        raw = data.get(key, DEFAULTS.get(key))
        if isinstance(raw[0], list):
            size *= math.prod(len(r) for r in raw)
        else:
            size *= len(raw) if key in tie else len(raw) ** n
    for key in ("act", "feature_dim", "patch_size", "merge_size"):
        size *= len(data.get(key) or DEFAULTS[key])
    return size


# ---------------------------------------------------------------------------- shipped spaces
def test_default_space_contains_t0_to_t2(default_space):
    for name in ("fasternet_t0", "fasternet_t1", "fasternet_t2"):
        assert default_space.contains(PRESETS[name]), name


def test_shipped_spaces_contain_the_presets_their_yaml_allows(shipped, preset):
    space, data = shipped
    assert space.contains(PRESETS[preset]) == yaml_allows(data, PRESETS[preset])


def test_values_give_back_the_architecture(default_space):
    rng = np.random.default_rng(0)
    for arch in [default_space.sample(rng) for _ in range(20)] + [PRESETS["fasternet_t1"]]:
        values = default_space.values(arch)
        assert set(values) == set(default_space.params())
        assert all(v in default_space.params()[k] for k, v in values.items())
        assert default_space.to_arch(values) == arch
    assert default_space.values(PRESETS["fasternet_t0"].replace(feature_dim=512)) is None


def test_contains_rejects_archs_outside(default_space):
    t0 = PRESETS["fasternet_t0"]
    for outside in (t0.replace(widths=(40, 80, 160, 336)), t0.replace(kernel_sizes=(7, 3, 3, 3)),
                    t0.replace(patch_size=2), t0.replace(feature_dim=512),
                    t0.replace(widths=(40, 80, 160), depths=(1, 2, 8), n_divs=(4,) * 3,
                               mlp_ratios=(2,) * 3, kernel_sizes=(3,) * 3)):
        assert not default_space.contains(outside), outside


def corner(space: SearchSpace, largest: bool) -> ArchConfig:
    """Every knob at its smallest (or largest) network; a larger n_div means a smaller PConv."""
    values = {}
    for name, choices in space.params().items():
        if name != "act":
            grows = not name.startswith("n_div")
            values[name] = max(choices) if largest == grows else min(choices)
    return space.to_arch(values)


def test_default_space_reaches_smaller_and_larger_networks(default_space):
    smallest, largest = corner(default_space, False), corner(default_space, True)
    assert default_space.contains(smallest) and default_space.contains(largest)
    assert count_params(smallest) < 0.5 * count_params(PRESETS["fasternet_t0"])
    assert count_params(largest) > 2 * count_params(PRESETS["fasternet_t2"])


def test_size_is_the_product_of_choice_counts(shipped):
    space, data = shipped
    assert space.size() > 1
    assert space.size() == yaml_size(data)
    assert space.size() == math.prod(len(c) for c in space.params().values())


def test_size_counts_distinct_architectures(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("stages: 2\nwidths: [[8, 16], [16, 24, 32]]\ndepths: [1, 2]\n"
                    "n_divs: [2, 4]\ntie: [n_divs]\nact: [gelu, relu]\n")
    space = SearchSpace.from_file(path)
    params = space.params()
    archs = {space.to_arch(dict(zip(params, combo))) for combo in itertools.product(*params.values())}
    assert space.size() == len(archs) == 2 * 3 * 2 * 2 * 2 * 2
    assert all(space.contains(a) for a in archs)


# ---------------------------------------------------------------------------- sampling
def test_sample_is_deterministic_per_seed(shipped):
    space, _ = shipped

    def draw(seed: int) -> list[ArchConfig]:
        rng = np.random.default_rng(seed)
        return [space.sample(rng) for _ in range(8)]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    assert len(set(draw(2))) > 1


def test_samples_are_contained(shipped):
    space, data = shipped
    rng = np.random.default_rng(5)
    for _ in range(60):
        arch = space.sample(rng)
        assert space.contains(arch) and yaml_allows(data, arch), arch


def test_timm_global_space_ties_knobs():
    space = SearchSpace.from_file(GLOBAL_SPACE_PATH)
    names = set(space.params())
    assert {"embed_dim", "n_div", "mlp_ratio"} <= names
    assert not any(n.startswith(("width_s", "n_div_s", "mlp_ratio_s")) for n in names)
    rng = np.random.default_rng(0)
    samples = [space.sample(rng) for _ in range(40)]
    for arch in samples:
        assert len(set(arch.n_divs)) == 1 and len(set(arch.mlp_ratios)) == 1, arch
        assert arch.widths == tuple(arch.widths[0] * 2**i for i in range(4)), arch
    assert len({a.n_divs for a in samples}) > 1 and len({a.widths for a in samples}) > 1
    # A per-stage-different arch with allowed values is still outside a tied space.
    t0 = PRESETS["fasternet_t0"]
    assert space.contains(t0) and not space.contains(t0.replace(n_divs=(4, 4, 2, 4)))


# ---------------------------------------------------------------------------- optuna
DEFAULT_PARAM_NAMES = {f"{stem}_s{i}" for stem in ("width", "depth", "n_div", "mlp_ratio", "kernel_size")
                       for i in range(4)} | {"act", "feature_dim"}
GLOBAL_PARAM_NAMES = {"embed_dim", "n_div", "mlp_ratio", "act"} | {f"depth_s{i}" for i in range(4)}


@pytest.mark.parametrize("space_name, names", [("default", DEFAULT_PARAM_NAMES),
                                               ("timm_global", GLOBAL_PARAM_NAMES)])
def test_suggest_names_and_rebuild(space_name, names):
    space = SearchSpace.from_file(SPACE_FILES[space_name])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    archs = []
    for _ in range(5):
        trial = study.ask()
        arch = space.suggest(trial)
        assert set(trial.params) == names
        assert space.contains(arch)
        assert space.to_arch(trial.params) == arch
        assert space.suggest(optuna.trial.FixedTrial(trial.params)) == arch
        study.tell(trial, float(count_params(arch)))
        archs.append(arch)
    assert len(set(archs)) > 1


def test_suggest_raises_on_constraint_violation():
    data = yaml.safe_load(DEFAULT_SPACE_PATH.read_text())
    space = SearchSpace.from_dict({**data, "constraints": {"max_params_m": 0.001}})
    trial = optuna.create_study().ask()
    with pytest.raises(ConstraintInfeasible):
        space.suggest(trial)


# ---------------------------------------------------------------------------- constraints
@pytest.mark.parametrize("constraints", [{"max_params_m": 0.001}, {"min_params_m": 1e6},
                                         {"max_params_m": 2, "min_params_m": 3}])
def test_infeasible_constraints_fail_fast(constraints):
    data = yaml.safe_load(DEFAULT_SPACE_PATH.read_text())
    space = SearchSpace.from_dict({**data, "constraints": constraints})
    outcome: list[BaseException] = []

    def sample() -> None:
        try:
            space.sample(np.random.default_rng(0))
        except BaseException as e:  # noqa: B036  (handed to the test thread)
            outcome.append(e)

    # A daemon thread turns an unbounded rejection loop into a failure instead of a hung run.
    worker = threading.Thread(target=sample, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "sampling an infeasible space did not return within 10 s"
    assert len(outcome) == 1 and isinstance(outcome[0], ConstraintInfeasible), outcome
    assert isinstance(outcome[0], ValueError)
    msg = str(outcome[0])
    assert "constraint infeasible" in msg and "\n" not in msg, msg


def test_feasible_constraints_are_met():
    data = yaml.safe_load(DEFAULT_SPACE_PATH.read_text())
    space = SearchSpace.from_dict({**data, "constraints": {"min_params_m": 3, "max_params_m": 8}})
    rng = np.random.default_rng(1)
    for _ in range(20):
        arch = space.sample(rng)
        assert 3e6 <= count_params(arch) <= 8e6 and space.contains(arch)
    assert space.contains(PRESETS["fasternet_t0"])  # 3.9M
    assert not space.contains(PRESETS["fasternet_t2"])  # 15.0M: in the grid, over the bound


# ---------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("text, fragments", [
    ("widths: [[8], [16]]\ndepths: [1]\nstages: 2\nwidht: [1]\n", ("'widht'", "unknown key")),
    ("stages: 2\nwidths: [[8, 16], [16, 32]]\ndepths: [1]\ntie: [widths]\n", ("tie", "widths")),
    ("stages: 2\nwidths: [[8, 16], [16, 32]]\ndepths: [1]\ntie: [colour]\n", ("tie", "'colour'")),
    ("stages: 2\nwidths: [[8, 16], [32]]\ndepths: [1]\nn_divs: [4, 16]\n", ("n_div", "16", "8")),
    ("stages: 2\nwidths: [[8, 16], [32]\ndepths: [1]\n", ("malformed",)),
    ("stages: 3\nwidths: [[8], [16]]\ndepths: [1]\n", ("widths", "2 stages", "3")),
    ("stages: 2\nwidths: [[8], [16]]\n", ("'depths'",)),
    ("stages: 0\nwidths: [[8]]\ndepths: [1]\n", ("stages",)),
    ("stages: 2\nwidths: [[8], [16]]\ndepths: [1, 1]\n", ("depths", "twice")),
    ("stages: 2\nwidths: [[8], [16]]\ndepths: [0, 1]\n", ("depths",)),
    ("stages: 2\nwidths: [[8], [16]]\ndepths: [1]\nkernel_sizes: [3, 4]\n", ("kernel_sizes", "4")),
    ("stages: 2\nwidths: [[8], [16]]\ndepths: [1]\nact: [gelu, tanh]\n", ("act", "tanh")),
    ("stages: 2\nwidths: {embed_dim: [8], scale: [1, 2, 4]}\ndepths: [1]\n", ("widths.scale",)),
    ("stages: 2\nwidths: {embed_dim: [8], factor: [1, 2]}\ndepths: [1]\n", ("widths", "'factor'")),
    ("stages: 2\nwidths: [[8], [16]]\ndepths: [1]\nconstraints: {max_latency_ms: 3}\n",
     ("'max_latency_ms'",)),
    ("stages: 2\nwidths: [[8], [16]]\ndepths: [1]\nconstraints: {max_params_m: -1}\n",
     ("max_params_m", "-1")),
    ("- 1\n- 2\n", ("mapping",)),
], ids=["unknown-key", "tie-per-stage", "tie-unknown", "ndiv-zero-channels", "malformed",
        "stage-count", "missing-depths", "zero-stages", "duplicate-choice", "depth-0", "even-kernel",
        "bad-act", "scale-length", "width-mapping-keys", "unknown-constraint", "negative-constraint",
        "not-a-mapping"])
def test_bad_space_files_give_one_line_errors(tmp_path, text, fragments):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as excinfo:
        SearchSpace.from_file(path)
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, ArchError) and "\n" not in msg, msg
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_missing_space_file(tmp_path):
    with pytest.raises(ArchError, match="cannot read") as excinfo:
        SearchSpace.from_file(tmp_path / "nope.yaml")
    assert "\n" not in str(excinfo.value)
