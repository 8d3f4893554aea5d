"""`LatencyPredictor`: the protocol the search needs from a latency predictor.

The search (`optimize.Objective`, `search.py`) receives one predictor per device and asks it
three things: the latency of an architecture, whether it covers every layer a search space can
produce (checked before any trial), and where its numbers come from (printed, and stored in
`run.json`). `LatencyTable` (the kernel-level sum of nn-Meter, Zhang et al., MobiSys 2021)
is the shipped one; another predictor (a GNN, an analytic model, a test double) implements
these members and plugs in without imitating a table's internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .table import LatencyTable

if TYPE_CHECKING:
    from search_space import ArchConfig, SearchSpace

__all__ = ["LatencyPredictor", "load_predictor"]


@runtime_checkable
class LatencyPredictor(Protocol):
    """What the search asks of a device's latency predictor.

    `predict` and `check_coverage` raise `latency_tables.MissingLayerError` (one line naming what is missing
    and the command that fixes it) for an architecture or space they cannot predict; a
    predictor never answers 0 for what it does not know.
    """

    #: The device (table) name the search reports latencies under.
    name: str

    def predict(self, arch: ArchConfig) -> float:
        """Latency of `arch`, ms per image."""
        ...

    def check_coverage(self, space: SearchSpace) -> None:
        """Raise `MissingLayerError` unless every architecture `space` can sample is covered."""
        ...

    def provenance(self) -> Mapping[str, Any]:
        """A JSON-serializable record of where the numbers come from (stored in `run.json`;
        at least ``source``: "measured", "derived", ...)."""
        ...

    def provenance_note(self) -> str:
        """One or two lines for the search output: where the numbers come from, and for an
        estimate, the command that measures the real device."""
        ...


def load_predictor(name: str) -> LatencyPredictor:
    """The predictor of a device by table name ("auto": this machine); raises
    `TableNotFoundError` listing the known tables."""
    return LatencyTable.load(name)

