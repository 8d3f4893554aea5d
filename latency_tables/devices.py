"""Every device known by name, declared once (`DEVICES`), and where a table's numbers come from.

A `DeviceSpec` is all the package knows about a device: its aliases and hardware, the
protocol its latency is defined by (target, batch, threads; latency or throughput), the
command that measures it and where to run that command, and, for a device we cannot
reach, the column of its published figures and the prior of its cost-model profile.

`arm`, `cpu` and `gpu` are the three devices of the FasterNet paper (Chen et al., CVPR
2023): their shipped tables are *derived* from a cost model calibrated on the paper's
published measurements (`latency_tables.derive`) until someone runs `measure_command` on
the real device, which writes a *measured* table of the same name that replaces it.

The rest of the package reads a spec's fields (`spec.throughput`, `spec.batch`,
`spec.published_column`, ...), never a device's name: adding a device is one `DeviceSpec`
here (or `register_device(spec)`), see "How to add a device" in README.md.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .budget import budget_note
from .cost_model import COMPUTE_KINDS, DeviceProfile

if TYPE_CHECKING:
    from .table import LatencyTable

__all__ = ["DERIVED_DEVICES", "DEVICES", "DeviceSpec", "SpecView", "derivable_devices",
           "derivable_spec", "device_spec", "provenance_note", "register_device", "resolve_alias"]

_TARGETS = ("cpu", "cuda")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """One device: what it is, how its latency is defined, how to measure or derive it.

    Args:
        name: table name (`tables/<name>.csv`), lower case, `[a-z0-9-]`.
        aliases: other names accepted wherever a table name is, in any case (`cortex-a72`,
            `Cortex-A72` -> `arm`); lower case like `name`.
        description: one line: hardware and protocol, e.g. "..., 1 thread, batch 1, fp32".
        hardware: what the table sidecar records under `device` (`cpu_model`, `gpu_name`,
            `machine`).
        target: "cpu" or "cuda": what `build --target` times on.
        batch: images per timed pass in the protocol (the paper: 1 on CPUs, 32 on the GPU).
        threads: intra-op threads of the protocol (None: not set, e.g. on a GPU).
        throughput: the published figure is images/s at `batch` (else ms per image).
        measure_on: where `measure_command` must run ("the Raspberry Pi 4 board").
        published_column: column of `profiles/published_*.csv` with the device's figures;
            None for a device that is only measured (then the fields below are unused).
        published_protocol: how the published figures were measured (table sidecar).
        prior: keyword arguments of `DeviceProfile` other than `device` and `batch`: the
            start and prior centre of the profile fit (`rates_gmacs` G MAC/s per compute
            kind, `bandwidth_gbs` GB/s, overheads in us, ...).
        activation_cost: (erf activation (GELU) / ReLU cost ratio, its source):
            measured, never fitted (no published row separates GELU from ReLU).
        exp_activation_cost: exp-class activation (SiLU; also sigmoid, tanh, softmax) / ReLU
            cost ratio, measured in the same run and kernel set as `activation_cost` (same
            source).
    """

    name: str
    aliases: tuple[str, ...] = ()
    description: str
    hardware: Mapping[str, str]
    target: str
    batch: int = 1
    threads: int | None = 1
    throughput: bool = False
    measure_on: str
    published_column: str | None = None
    published_protocol: str = ""
    prior: Mapping[str, Any] | None = None
    activation_cost: tuple[float, str] = (1.0, "none: GELU taken at ReLU's cost")
    exp_activation_cost: float = 1.0

    def __post_init__(self) -> None:
        for field, value in (("name", self.name), *(("aliases", a) for a in self.aliases)):
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
                raise ValueError(f"{field}: {value!r} must be lower case letters, digits and '-'")
        if self.target not in _TARGETS:
            raise ValueError(f"target: {self.target!r} is not one of {_TARGETS}")
        if self.batch < 1:
            raise ValueError(f"batch: {self.batch} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: {self.threads} must be >= 1 or None")
        if self.derivable:
            if self.prior is None or not self.published_protocol:
                raise ValueError(f"{self.name}: a device with a published_column needs a prior "
                                 "and a published_protocol")
            self.prior_profile()  # unknown or missing profile constants fail here, by name

    @property
    def derivable(self) -> bool:
        """Whether its table can be derived from published figures (`calibrate --device`)."""
        return self.published_column is not None

    @property
    def measure_command(self) -> str:
        """The command that measures the real device (run it on `measure_on`)."""
        return (f"python -m latency_tables build --device {self.name} --target {self.target}"
                + (f" --batch {self.batch}" if self.batch != 1 else "")
                + (f" --threads {self.threads}" if self.threads is not None else ""))

    def prior_profile(self) -> DeviceProfile:
        """The profile the fit starts from and is pulled towards (`prior` + `activation_cost`)."""
        if self.prior is None:
            raise ValueError(f"{self.name}: no published figures, hence no cost-model prior")
        ratio, source = self.activation_cost
        return DeviceProfile(device=self.name, batch=self.batch, act_cost_ratio=ratio,
                             exp_cost_ratio=self.exp_activation_cost, act_cost_source=source,
                             **copy.deepcopy(dict(self.prior)))

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus `measure_command`."""
        return {**dataclasses.asdict(self), "measure_command": self.measure_command}


def _rates(*gmacs: float) -> dict[str, float]:
    """G MAC/s per compute kind, in `cost_model.COMPUTE_KINDS` order (pool: G elem-op/s)."""
    return dict(zip(COMPUTE_KINDS, gmacs, strict=True))


_PAPER_CPU_PROTOCOL = "batch 1, one thread, fp32, PyTorch eager, BN folded (FasterNet paper, Sec. 4)"
_ACT_REPORT = "benchmarks/reports/activation_cost.{md,json}"

#: Every declared device by table name. Activation costs (GELU / ReLU and SiLU / ReLU): the
#: medians over the FasterNet-T0/T2 hidden tensors of one kernel set in `_ACT_REPORT`; a test
#: keeps them equal. Priors:
#: datasheet-level guesses, G MACs/s, GB/s, us, MACs per output element.
DEVICES: dict[str, DeviceSpec] = {spec.name: spec for spec in (
    DeviceSpec(
        name="arm", aliases=("cortex-a72", "raspberry-pi-4", "rpi4"),
        description="ARM Cortex-A72 (Raspberry Pi 4 Model B), 1 thread, batch 1, fp32",
        hardware={"cpu_model": "ARM Cortex-A72 (Raspberry Pi 4 Model B, 1 GB)",
                  "machine": "aarch64"},
        target="cpu", batch=1, threads=1,
        measure_on="the Raspberry Pi 4 (aarch64) board, with this repository installed",
        published_column="arm_ms", published_protocol=_PAPER_CPU_PROTOCOL,
        # Cortex-A72 @1.5 GHz, 1 thread: 4 fp32 FMA/cycle peak = 6 GMACs/s; LPDDR4 ~4 GB/s.
        # Per matrix of a bmm: a slice and a GEMM call in eager PyTorch, ~5 us at 1.5 GHz.
        prior=dict(rates_gmacs=_rates(4.0, 4.0, 2.0, 0.3, 1.5, 0.5), bandwidth_gbs=3.0,
                   eltwise_efficiency=0.5, overhead_us=20.0, group_overhead_us=10.0,
                   matmul_overhead_us=5.0, launches_overlap=False),
        activation_cost=(8.38, f"{_ACT_REPORT}, kernel set 'default' (ATen portable kernel, "
                               "oneDNN off: scalar std::erf) on an Intel Xeon (family 6, model "
                               "207): the case of a CPU whose PyTorch build has no vectorized "
                               "erf; a stand-in, not measured on the Cortex-A72 (no published "
                               "figure found)"),
        exp_activation_cost=3.11,  # SiLU / ReLU, same kernel set: a vectorized exp is cheaper
    ),
    DeviceSpec(
        name="cpu", aliases=("i9-9900x", "intel-i9-9900x"),
        description="Intel Core i9-9900X, 1 thread, batch 1, fp32",
        hardware={"cpu_model": "Intel(R) Core(TM) i9-9900X CPU @ 3.50GHz", "machine": "x86_64"},
        target="cpu", batch=1, threads=1,
        measure_on="the i9-9900X machine",
        published_column="cpu_ms", published_protocol=_PAPER_CPU_PROTOCOL,
        # i9-9900X, 1 thread, AVX-512: ~100 GMACs/s peak; ~15 GB/s single-core bandwidth.
        # Per matrix of a bmm: a slice and a GEMM call in eager PyTorch, ~1 us at 3.5 GHz.
        prior=dict(rates_gmacs=_rates(80.0, 80.0, 30.0, 7.0, 30.0, 5.0), bandwidth_gbs=15.0,
                   eltwise_efficiency=0.5, overhead_us=5.0, group_overhead_us=0.5,
                   matmul_overhead_us=1.0, launches_overlap=False),
        activation_cost=(2.52, f"{_ACT_REPORT}, kernel set 'avx512+onednn' (PyTorch as "
                               "shipped, GELU via oneDNN) on an Intel Xeon (family 6, model "
                               "207), the i9-9900X's AVX-512 ISA; not measured on the i9-9900X "
                               "(no published figure found)"),
        exp_activation_cost=2.50,  # SiLU / ReLU, same kernel set
    ),
    DeviceSpec(
        name="gpu", aliases=("rtx2080ti", "rtx-2080ti", "2080ti"),
        description="NVIDIA GeForce RTX 2080 Ti, throughput at batch 32, fp32",
        hardware={"gpu_name": "NVIDIA GeForce RTX 2080 Ti", "machine": "x86_64",
                  "cpu_model": "host CPU not published"},
        target="cuda", batch=32, threads=None, throughput=True,
        measure_on="the machine with the RTX 2080 Ti",
        published_column="gpu_fps",
        published_protocol="throughput at batch 32, fp32, PyTorch eager, BN folded "
                           "(FasterNet paper, Sec. 4)",
        # RTX 2080Ti fp32: 6.7 TMACs/s peak (Winograd can beat it), 616 GB/s, ~10 us launches;
        # a ~3 us gap between dependent kernels in eager PyTorch.
        prior=dict(rates_gmacs=_rates(8000.0, 6000.0, 3000.0, 300.0, 2000.0, 500.0),
                   bandwidth_gbs=450.0, eltwise_efficiency=0.7, overhead_us=8.0,
                   group_overhead_us=0.01, launches_overlap=True, kernel_overhead_us=3.0),
        activation_cost=(1.0, "none measured (no GPU in this session): GELU taken at ReLU's "
                              "cost, both bandwidth-bound elementwise kernels on a GPU"),
    ),
)}


def register_device(spec: DeviceSpec) -> DeviceSpec:
    """Add `spec` to `DEVICES`; its name and aliases must not be taken by another device."""
    taken = {n: n for n in DEVICES} | _aliases()
    for name in (spec.name, *spec.aliases):
        if name in taken:
            raise ValueError(f"{spec.name}: name or alias {name!r} is already {taken[name]!r}")
    DEVICES[spec.name] = spec
    return spec


def _aliases() -> dict[str, str]:
    return {a: spec.name for spec in DEVICES.values() for a in spec.aliases}


def resolve_alias(name: str) -> str:
    """Canonical table name of a device alias (`cortex-a72` -> `arm`); other names unchanged."""
    return _aliases().get(str(name).lower(), str(name))


def device_spec(name: str) -> DeviceSpec | None:
    """The declared spec of a table name or alias; None for an undeclared (measured) device."""
    return DEVICES.get(resolve_alias(name))


def derivable_devices() -> list[str]:
    """Names of the devices whose tables can be derived from published figures."""
    return [n for n, spec in DEVICES.items() if spec.derivable]


def derivable_spec(name: str) -> DeviceSpec:
    """The spec of a device with published figures (canonical name); KeyError for any other."""
    spec = DEVICES.get(name)
    if spec is None or not spec.derivable:
        raise KeyError(name)
    return spec


_T = TypeVar("_T")


class SpecView(Mapping[str, _T]):
    """Read-only `{name: get(spec)}` over the derivable devices, read from `DEVICES` at each
    access (so a device registered later is in it): one field, in the form a caller indexes."""

    def __init__(self, get: Callable[[DeviceSpec], _T]) -> None:
        self._get = get

    def __getitem__(self, name: str) -> _T:
        return self._get(derivable_spec(name))

    def __iter__(self) -> Iterator[str]:
        return iter(derivable_devices())

    def __len__(self) -> int:
        return len(derivable_devices())


#: `{name: spec.to_dict()}` of the derivable devices (the form older callers index by key).
DERIVED_DEVICES: Mapping[str, dict[str, Any]] = SpecView(DeviceSpec.to_dict)


def provenance_note(table: LatencyTable) -> str:
    """One or two lines for the search output: where the table's numbers come from."""
    meta = table.meta
    if table.source == "derived":
        d = meta.get("derived", {})
        loo = d.get("leave_one_out", {}).get("all", {})
        worst = d.get("leave_one_out", {}).get("worst")
        err = (f"; leave-one-out error on {int(loo.get('n', 0))} published networks: MAPE "
               f"{loo.get('mape_pct', float('nan')):.1f} %, Kendall tau "
               f"{loo.get('kendall_tau', float('nan')):.2f}" if loo else "")
        if worst:
            err += f", worst {worst['network']} {worst['error_pct']:+.0f} %"
        if d.get("resting_on_prior"):
            err += f"; constants resting on their prior: {', '.join(d['resting_on_prior'])}"
        spec = DEVICES.get(table.name)
        cmd = spec.measure_command if spec else d.get(
            "measure_command", f"python -m latency_tables build --device {table.name}")
        description = spec.description if spec else d.get("description", table.name)
        measure_on = spec.measure_on if spec else "the device"
        return (f"latency table {table.name!r} is DERIVED, not measured: a roofline cost model "
                f"calibrated on published FasterNet measurements ({description}){err}.\n"
                f"  Measure the real device: run `{cmd}` on {measure_on}; the measured table "
                "replaces this one.")
    from .trust import trust_note  # trust imports table, which imports this module

    dev = meta.get("device", {})
    hw = dev.get("gpu_name") or dev.get("cpu_model") or "unknown device"
    mixed = budget_note(meta)
    trust = trust_note(meta)  # verified here, calibrated, or not verified ('' unchecked)
    return (f"latency table {table.name!r} is {table.source} on {hw} "
            f"({meta.get('date', 'date unknown')}, batch {table.batch}, "
            f"{meta.get('threads', '?')} thread(s), {table.runtime_label()})"
            + (f", {trust}" if trust else "")
            + (f"; {mixed}." if mixed else "."))
