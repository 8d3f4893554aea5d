"""Latency tables: per-layer latencies measured on a device, and prediction from them.

Kernel-level latency prediction after nn-Meter (Zhang et al., MobiSys 2021) for the fused
FasterNet layers of `search_space` (Chen et al., CVPR 2023). `python -m latency_tables
build|calibrate|validate|verify|predict|operators`; see README.md in this folder. Tables can be
measured in eager PyTorch, ONNX Runtime or ExecuTorch (`runtimes.py`), each in its deployment
form (`deploy.py`). A measured table holds where it was measured: `verify` times probe
networks here (`trust.py`).
"""

from .build import TABLE_COLUMNS, build_table
from .cost_model import DeviceProfile, OpTrace, predict_ms, trace
from .derive import calibrate_published, derive_table, load_profile
from .devices import (
    DERIVED_DEVICES,
    DEVICES,
    DeviceSpec,
    device_spec,
    provenance_note,
    register_device,
    resolve_alias,
)
from .fingerprint import compare, machine_fingerprint
from .layers import KINDS, LayerSig, arch_layers, make_layer, space_layers
from .measure import Protocol, Timing, time_layer, time_network
from .operators import compare_operators, time_operators
from .predictor import LatencyPredictor, load_predictor
from .table import (
    SHIPPED_DIR,
    LatencyTable,
    MissingLayerError,
    TableNotFoundError,
    TableVersionError,
    available,
    user_dir,
)
from .trust import TrustError, Verification, calibrated, verify
from .validate import Accuracy, Validation, accuracy, calibrate, fit_correction, validate

__all__ = ["Accuracy", "DERIVED_DEVICES", "DEVICES", "DeviceProfile", "DeviceSpec", "KINDS",
           "LatencyTable", "LayerSig", "MissingLayerError", "OpTrace", "Protocol", "SHIPPED_DIR",
           "TABLE_COLUMNS", "TableNotFoundError", "TableVersionError", "Timing", "Validation",
           "accuracy", "arch_layers",
           "available", "build_table", "calibrate", "calibrate_published", "compare_operators",
           "derive_table", "device_spec", "fit_correction", "load_profile", "make_layer",
           "predict_ms", "provenance_note", "register_device", "resolve_alias", "space_layers",
           "time_layer", "time_network", "time_operators", "trace", "user_dir", "validate"]
__all__ += ["LatencyPredictor", "load_predictor"]  # the search's seam (`predictor.py`)
from .deploy import FormChoice, choose_form  # noqa: E402  (after .validate: deploy imports it lazily)
from .runtimes import (  # noqa: E402
    RUNTIMES,
    NotFullyLowered,
    Runtime,
    RuntimeMismatch,
    RuntimeNotInstalled,
    UnknownRuntime,
    get_runtime,
)

__all__ += ["FormChoice", "NotFullyLowered", "RUNTIMES", "Runtime", "RuntimeMismatch",
            "RuntimeNotInstalled", "UnknownRuntime", "choose_form", "get_runtime"]
__all__ += ["TrustError", "Verification", "calibrated", "compare", "machine_fingerprint",
            "verify"]  # does a measured table hold here (`fingerprint.py`, `trust.py`)

