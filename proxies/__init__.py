"""Accuracy proxies for pconv-nas: datasets, a short-training proxy, zero-cost proxies,
and their validation against a longer training run (`python -m proxies validate`).

    from proxies import ShortTrain, PROXIES
    proxy = ShortTrain(dataset="fashion-mnist", budget="quick", seed=0)
    result = proxy(arch)                 # ProxyResult(accuracy=..., tse=..., seconds=...)
    snip = PROXIES["snip"](dataset="fashion-mnist", budget="quick", seed=0)

Every trainer takes a keyword-only ``device`` (``auto``: CUDA when available; see
`proxies.device`). `proxies.reference` holds the ground truth: reference sets trained to a
complete schedule. See `proxies.data` (datasets, resolution), `proxies.base` (budgets, the result record,
the callback protocol), `proxies.short_train`, `proxies.zero_cost`, `proxies.validate`.
"""

from .base import BUDGETS, Budget, Callback, Proxy, ProxyResult, StopTrial
from .data import DATASETS, Dataset, DatasetError, carve_validation, load_dataset
from .device import DeviceError, resolve_device
from .registry import PROXIES, make_proxy
from .short_train import ShortTrain
from .zero_cost import ZERO_COST_SCORES, ZeroCost

__all__ = ["BUDGETS", "Budget", "Callback", "DATASETS", "Dataset", "DatasetError", "DeviceError",
           "PROXIES",
           "Proxy", "ProxyResult", "ShortTrain", "StopTrial", "ZERO_COST_SCORES", "ZeroCost",
           "carve_validation", "load_dataset", "make_proxy", "resolve_device"]
