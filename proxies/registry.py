"""`PROXIES`: proxy name -> factory ``(dataset=..., budget=..., seed=...) -> Proxy``."""

from __future__ import annotations

import functools
from collections.abc import Callable

from .base import Proxy
from .estimate import Estimate
from .short_train import ShortTrain
from .zero_cost import ZeroCost

__all__ = ["PROXIES", "make_proxy"]

#: Every proxy by name; each factory takes keyword-only ``dataset``, ``budget``, ``seed``
#: (and ``threads``). ``short_train`` is the default proxy of the search.
PROXIES: dict[str, Callable[..., Proxy]] = {
    "short_train": ShortTrain,
    "tse": functools.partial(ShortTrain, score="tse"),
    **{name: functools.partial(ZeroCost, name)
       for name in ("synflow", "naswot", "grad_norm", "snip", "params", "flops")},
    "estimate": Estimate,
}


def make_proxy(name: str, **kwargs: object) -> Proxy:
    """`PROXIES[name](**kwargs)` with a clear error for an unknown name."""
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}; choose one of {', '.join(PROXIES)}")
    return PROXIES[name](**kwargs)
