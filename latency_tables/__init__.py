"""Latency tables: per-layer latencies measured on a device, and prediction from them.

Kernel-level latency prediction after nn-Meter (Zhang et al., MobiSys 2021) for the fused
FasterNet layers of `search_space` (Chen et al., CVPR 2023). `python -m latency_tables
build|calibrate|validate|operators`; see README.md in this folder.
"""

from .build import TABLE_COLUMNS, build_table
from .layers import KINDS, LayerSig, arch_layers, make_layer, space_layers
from .measure import Protocol, Timing, time_layer, time_network
from .operators import compare_operators, time_operators
from .table import SHIPPED_DIR, LatencyTable, MissingLayerError, TableNotFoundError, available, user_dir
from .validate import Accuracy, Validation, accuracy, calibrate, fit_correction, validate

__all__ = ["Accuracy", "KINDS", "LatencyTable", "LayerSig", "MissingLayerError", "Protocol",
           "SHIPPED_DIR", "TABLE_COLUMNS", "TableNotFoundError", "Timing", "Validation",
           "accuracy", "arch_layers", "available", "build_table", "calibrate",
           "compare_operators", "fit_correction", "make_layer", "space_layers", "time_layer",
           "time_network", "time_operators", "user_dir", "validate"]
