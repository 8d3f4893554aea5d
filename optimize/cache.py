"""Proxy results on disk, reused across runs: what every search computes the same way.

Every search scores FasterNet-T0/T1/T2 with its proxy so that they compare with its front
(`optimize.cli`); with the same proxy, dataset, budget and seed that is the same training
each time, about 2 minutes of a 10-minute run on a 2-core machine. `ProxyCache` keeps each
result in a file named by a hash of everything that decides it (`ResultKey`): the
architecture, the proxy, the dataset, the budget, the seed, where it trained (device,
precision, threads), the torch and timm versions, and the code (`code_version`: a hash of
the proxies' and the network builder's sources and of the fitted estimates). Change any of
them and the key changes: the result is computed again, never mixed up.

Entries are JSON files written atomically (a temporary file renamed into place), so a run
killed while writing leaves no half entry; one that cannot be read or does not match its key
is ignored and recomputed. Failed evaluations are not stored. Latency is not stored here: it
comes from the run's own tables. The folder is ``$PCONV_NAS_CACHE/presets``, by default
``~/.cache/pconv-nas/presets`` (``$XDG_CACHE_HOME`` respected, as for the datasets).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from proxies import Proxy, ProxyResult
    from search_space import ArchConfig

__all__ = ["ResultKey", "ProxyCache", "Cached", "code_version", "cache_root", "CODE_FILES"]

_REPO = Path(__file__).resolve().parents[1]
#: The files whose text decides a proxy's result (`code_version`): the proxies, the network
#: builder they train, and the fitted models of the learned estimate.
CODE_FILES = ("proxies/*.py", "proxies/estimates/*.json", "search_space/*.py")


def cache_root() -> Path:
    """``$PCONV_NAS_CACHE``, else ``$XDG_CACHE_HOME/pconv-nas`` (``~/.cache/pconv-nas``)."""
    env = os.environ.get("PCONV_NAS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pconv-nas"


def code_version(files: Iterable[Path] | None = None) -> str:
    """A hash of the bytes of `files` and their names (with their folder's: ``proxies/base.py``;
    default: `CODE_FILES` in this repository): editing, adding or removing one changes it."""
    if files is None:
        return _repo_code_version()
    h = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        name = f"{path.parent.name}/{path.name}"
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def _repo_code_version() -> str:
    return code_version(p for pattern in CODE_FILES for p in _REPO.glob(pattern))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResultKey:
    """Everything that decides a proxy's result on one architecture; `digest` names its file."""

    arch: str      # the architecture's canonical file form (JSON)
    proxy: str     # the proxy's name
    dataset: str
    budget: str    # every field of the `Budget`, JSON: two spellings of one budget agree
    seed: int
    device: str    # where it trained: device, precision, CPU threads
    torch: str
    timm: str      # the network is built, optimized and scheduled by timm
    code: str      # `code_version`

    @classmethod
    def of(cls, arch: ArchConfig, proxy: Proxy, *, dataset: str, device: str,
           torch_version: str | None = None, timm_version: str | None = None,
           code: str | None = None) -> ResultKey:
        """The key of `proxy(arch)`; the versions default to the installed ones and `code`
        to this repository's `code_version()`."""
        import timm
        import torch

        return cls(arch=_canonical(arch.to_dict()), proxy=proxy.name, dataset=dataset,
                   budget=_canonical(dataclasses.asdict(proxy.budget)), seed=int(proxy.seed),
                   device=device, torch=torch_version or torch.__version__,
                   timm=timm_version or timm.__version__, code=code or code_version())

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical(dataclasses.asdict(self)).encode()).hexdigest()[:32]


class Cached(NamedTuple):
    """A stored result and when it was stored."""

    result: ProxyResult
    stored: dt.datetime


class ProxyCache:
    """`proxy`'s results under `root` (`cache_root() / "presets"` by default), keyed by
    `ResultKey.of(arch, proxy, dataset=..., device=...)`. `get` and `put` never raise on a
    bad or unwritable entry: the caller computes the result instead."""

    def __init__(self, proxy: Proxy, *, dataset: str, device: str, root: Path | None = None,
                 **versions: str) -> None:
        self.proxy, self.dataset, self.device = proxy, dataset, device
        self.root = root if root is not None else cache_root() / "presets"
        self.versions = versions  # torch_version, timm_version, code: see `ResultKey.of`

    def key(self, arch: ArchConfig) -> ResultKey:
        return ResultKey.of(arch, self.proxy, dataset=self.dataset, device=self.device,
                            **self.versions)

    def path(self, arch: ArchConfig) -> Path:
        return self.root / f"{self.key(arch).digest}.json"

    def get(self, arch: ArchConfig) -> Cached | None:
        """The stored result of `proxy(arch)`, or None (none stored, unreadable, or stored
        under another key)."""
        key = self.key(arch)
        try:
            entry = json.loads((self.root / f"{key.digest}.json").read_text())
            if entry["key"] != dataclasses.asdict(key):
                return None
            return Cached(_result(entry["result"]), dt.datetime.fromisoformat(entry["stored"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def put(self, arch: ArchConfig, result: ProxyResult) -> bool:
        """Store `result` (not a failed one); False when it was not stored (failed, or the
        folder is not writable)."""
        if result.failed:
            return False
        key = self.key(arch)
        entry = {"key": dataclasses.asdict(key), "result": result.to_dict(),
                 "stored": dt.datetime.now().isoformat(timespec="seconds")}
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f, indent=1)
            os.replace(tmp, self.root / f"{key.digest}.json")
            return True
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            return False


def _canonical(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _result(data: Mapping[str, Any]) -> ProxyResult:
    """The inverse of `ProxyResult.to_dict`."""
    from proxies import Budget, ProxyResult

    data = dict(data)
    data["budget"] = None if data.get("budget") is None else Budget(**data["budget"])
    for name in ("checkpoints", "train_losses"):
        data[name] = tuple(tuple(c) for c in data.get(name) or ())
    return ProxyResult(**data)
