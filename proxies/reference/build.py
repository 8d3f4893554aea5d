"""Building a reference set: which architectures, which seeds, and training them resumably.

A set lives in one folder: ``set.json`` (the sidecar: dataset, protocol, seeds, every
architecture with its role, latency stratum and tune/holdout split, versions, and how
complete the rows are) and ``runs*.jsonl`` (one line per finished training run, appended
as it finishes, under a file lock, so processes on one machine share a file; machines
write their own ``runs-<host>-<cpu or cuda>.jsonl`` and the files are simply committed side by
side).

`design_set` draws the architectures: ``n`` from the search space with a fixed seed,
stratified by predicted latency on a latency table (equal counts per quantile of a large
sample), plus named presets; a fixed, seeded split puts half of them in ``tune`` and half
in ``holdout`` (presets included), so a proxy is designed on one and judged on the other.

`run_missing` trains every (protocol, architecture, seed) run the rows lack — sharded with
``shard=(i, n)`` over processes or machines, in ``workers`` processes on one device. A
failed run (NaN loss, out of memory, a network that cannot run) is recorded with its
reason, never counted as a result, and retried by the next build.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import functools
import hashlib
import json
import multiprocessing
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from search_space import PRESETS, ArchConfig, SearchSpace, params_and_flops

from ..data import Dataset, load_dataset
from ..device import determinism, device_name, precision_name, resolve_device, resolve_precision
from .protocol import Protocol

__all__ = ["ReferenceSet", "Member", "design_set", "pilot_members", "run_missing", "read_runs",
           "SET_FILE", "shard_of", "RunPlan"]

SET_FILE = "set.json"
#: Candidates drawn to estimate the latency quantiles (and to fill each stratum).
_POOL = 4000
#: The presets every set carries, so their place is known (timm names).
SET_PRESETS = ("fasternet_t0", "fasternet_t1", "fasternet_t2")


@dataclasses.dataclass(frozen=True)
class Member:
    """One architecture of a set: its role (``sampled`` or a preset/pilot name), latency
    stratum (quantile index, -1 for extras) and split (``tune`` or ``holdout``)."""

    arch: ArchConfig
    role: str
    stratum: int
    split: str

    @property
    def arch_id(self) -> str:
        return self.arch.arch_id

    def to_dict(self) -> dict[str, Any]:
        return {"arch_id": self.arch_id, "role": self.role, "stratum": self.stratum,
                "split": self.split, "arch": self.arch.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> Member:
        arch = ArchConfig.from_dict(data["arch"], source=f"{source}: {data.get('arch_id')}")
        return cls(arch=arch, role=str(data["role"]), stratum=int(data["stratum"]),
                   split=str(data["split"]))


@dataclasses.dataclass(frozen=True)
class ReferenceSet:
    """Architectures x seeds under one (or, for a pilot, several) protocols, in a folder."""

    dataset: str
    members: tuple[Member, ...]
    seeds: tuple[int, ...]
    protocols: tuple[Protocol, ...]
    design: dict[str, Any]
    """How the members were drawn (space, n, seed, latency table, strata)."""

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SET_FILE
        data = {"dataset": self.dataset, "seeds": list(self.seeds),
                "protocols": [p.to_dict() for p in self.protocols], "design": self.design,
                "members": [m.to_dict() for m in self.members], **(extra or {})}
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> ReferenceSet:
        path = folder / SET_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no reference set here; create one with "
                                    "`python -m proxies reference build --out FOLDER`")
        try:
            data = json.loads(path.read_text())
            return cls(dataset=data["dataset"],
                       members=tuple(Member.from_dict(m, str(path)) for m in data["members"]),
                       seeds=tuple(int(s) for s in data["seeds"]),
                       protocols=tuple(Protocol.from_dict(p) for p in data["protocols"]),
                       design=dict(data.get("design", {})))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a reference set file ({type(e).__name__}: {e})") from None

    def plan(self) -> list[RunPlan]:
        """Every (protocol, architecture, seed) run of the set, cheapest protocol first."""
        return [RunPlan(p, m, s) for p in self.protocols for m in self.members for s in self.seeds]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    protocol: Protocol
    member: Member
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol.protocol_id, self.member.arch_id, self.seed)


def _latency_predictor(table: str) -> Callable[[ArchConfig], float]:
    from latency_tables import LatencyTable

    return LatencyTable.load(table).predict


def design_set(*, dataset: str, n: int = 40, seed: int = 0, seeds: Sequence[int] = (0, 1, 2),
               protocols: Sequence[Protocol] = (), space: SearchSpace | None = None,
               table: str = "arm", strata: int = 5,
               presets: Sequence[str] = SET_PRESETS,
               extras: Mapping[str, ArchConfig] | None = None) -> ReferenceSet:
    """`n` architectures stratified by predicted latency on `table` (``n / strata`` per
    quantile), plus `presets` and `extras` (role -> architecture, e.g. a front member whose
    claim is re-checked), split into tune/holdout halves by a seeded permutation. ``n = 0``:
    no sampled architectures, only the presets and extras (a set that re-checks named
    networks, such as a search's front)."""
    if n < 0 or n % strata:
        raise ValueError(f"--n {n}: must be a multiple of the {strata} latency strata (0: only "
                         "the presets and --extra architectures)")
    space = space or SearchSpace.default()
    predict = _latency_predictor(table)
    rng = np.random.default_rng(seed)
    pool, seen = [], set()
    for _ in range(_POOL if n else 0):
        arch = space.sample(rng)
        if arch.arch_id not in seen:
            seen.add(arch.arch_id)
            pool.append((arch, predict(arch)))
    edges = (np.quantile([ms for _, ms in pool], np.linspace(0, 1, strata + 1)) if pool
             else np.array([]))
    per, members = n // strata, []
    counts = [0] * strata
    for arch, ms in pool:  # in draw order: the first `per` of each stratum
        k = int(min(strata - 1, np.searchsorted(edges, ms, side="right") - 1))
        if counts[k] < per:
            counts[k] += 1
            members.append((arch, "sampled", k))
    named = {**{name: PRESETS[name] for name in presets}, **(extras or {})}
    chosen, ids = list(members), {a.arch_id for a, _, _ in members}
    for role, arch in named.items():
        if arch.arch_id not in ids:
            ids.add(arch.arch_id)
            chosen.append((arch, role, -1))
    split_rng = np.random.default_rng(seed + 1)
    order = split_rng.permutation(len(chosen))
    halves = {int(i): ("tune" if rank % 2 == 0 else "holdout") for rank, i in enumerate(order)}
    design = {"space": "default", "n": n, "seed": seed, "strata": strata,
              "latency_table": table, "pool": len(pool),
              "latency_edges_ms": [round(float(e), 3) for e in edges],
              "split_seed": seed + 1, "presets": list(presets),
              "extras": sorted(extras or {})}
    return ReferenceSet(dataset=dataset, seeds=tuple(seeds),
                        protocols=tuple(protocols) or (Protocol(),), design=design,
                        members=tuple(Member(a, role, k, halves[i])
                                      for i, (a, role, k) in enumerate(chosen)))


def pilot_members(space: SearchSpace | None = None, front_member: ArchConfig | None = None,
                  include: Sequence[str] = ("smallest", "tiny", "fasternet_t0", "fasternet_t1",
                                            "fasternet_t2", "largest")) -> tuple[Member, ...]:
    """The pilot's architectures spanning the space: its smallest and largest networks
    (first / last choice of every knob), T0/T1/T2, and a member of a default search's front
    (``tiny``: 24/48/96/192, depths 2/1/4/3, from `../shared` pilots; pass another)."""
    space = space or SearchSpace.default()
    params = space.params()
    first = space.to_arch({k: v[0] for k, v in params.items()})
    last = space.to_arch({k: v[-1] for k, v in params.items()})
    # The smallest network: first widths/depths/ratios, largest n_div (cheapest PConv).
    smallest = first.replace(n_divs=tuple(max(c) for c in space.stage_choices["n_divs"]))
    largest = last.replace(n_divs=tuple(min(c) for c in space.stage_choices["n_divs"]))
    tiny = front_member or ArchConfig(
        widths=(24, 48, 96, 192), depths=(2, 1, 4, 3), n_divs=(16, 2, 8, 16),
        mlp_ratios=(1.5, 1.5, 1.5, 2.0), kernel_sizes=(5, 5, 5, 5), act="relu",
        feature_dim=1024, patch_size=4, merge_size=2)
    named = {"smallest": smallest, "tiny": tiny, "largest": largest, **PRESETS}
    return tuple(Member(named[name], name, -1, "pilot") for name in include)


def shard_of(key: tuple[str, str, int], n: int) -> int:
    """Stable shard of a run (independent of the order of the plan and of Python's hash)."""
    text = "|".join(map(str, key)).encode()
    return int.from_bytes(hashlib.sha1(text).digest()[:4], "big") % n


# ---------------------------------------------------------------------- rows
def read_runs(folder: Path) -> pd.DataFrame:
    """Every line of ``runs*.jsonl`` in `folder` (one per run; later lines win per key)."""
    rows: dict[tuple, dict] = {}
    for path in sorted(folder.glob("runs*.jsonl")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (row["protocol_id"], row["arch_id"], int(row["seed"]))
            except (json.JSONDecodeError, KeyError, ValueError):
                raise ValueError(f"{path}:{i}: not a run record; remove the line") from None
            if row.get("status") == "ok" or rows.get(key, {}).get("status") != "ok":
                rows[key] = row
    return pd.DataFrame(list(rows.values()))


def _append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(row) + "\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=2)
def _heldout_dataset(name: str, device: str) -> Dataset:
    """The training split and the held-out split, on `device`, once per process."""
    return load_dataset(name, heldout="test").to(device)


def train_one(plan_dict: dict[str, Any], dataset: str, device: str,
              threads: int = 1, workers: int = 1) -> dict[str, Any]:
    """One reference training (runs in a worker process) -> its run record. It trains
    through `search.py train`'s loop (`train.train`, with `TrainConfig.from_protocol`: the
    protocol's recipe, bit-exact with the `ShortTrain` runs the committed rows came from)."""
    # Imported here: the train package builds on proxies (data, devices, this protocol).
    from train import TrainConfig, TrainingDiverged, train

    protocol = Protocol.from_dict(plan_dict["protocol"])
    arch = ArchConfig.from_dict(plan_dict["arch"])
    data = _heldout_dataset(dataset, device)
    dev = resolve_device(device)
    config = TrainConfig.from_protocol(protocol, seed=int(plan_dict["seed"]), device=device)
    start = time.perf_counter()
    reason, history = "", ()
    try:
        history = train(arch, config, dataset=data, threads=threads).history
    except torch.OutOfMemoryError:
        reason = f"out of memory on {device_name(dev)}"
    except TrainingDiverged as e:
        reason = str(e)
    except (RuntimeError, ValueError) as e:  # a network that cannot run at this resolution
        text = str(e).strip().splitlines()
        reason = f"cannot build or run the network: {type(e).__name__}: {text[0] if text else ''}"
    return {
        "protocol_id": protocol.protocol_id, "arch_id": arch.arch_id,
        "seed": int(plan_dict["seed"]), "status": "failed" if reason else "ok",
        "reason": reason, "accuracy": None if reason else history[-1].test_acc,
        "epochs": [{"epoch": r.epoch, "accuracy": r.test_acc, "train_loss": r.train_loss}
                   for r in history],
        "seconds": round(time.perf_counter() - start, 2), "device": device_name(dev),
        "precision": precision_name(resolve_precision("auto", dev)),
        "determinism": determinism(dev), "threads": threads if dev.type == "cpu" else None,
        "workers": workers, "heldout": data.heldout, "n_train": len(data.train_y),
        "n_heldout": len(data.val_y), "protocol": protocol.to_dict(), "role": plan_dict["role"],
        "machine": _machine(), "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _machine() -> str:
    from latency_tables._device import cpu_model

    return f"{socket.gethostname()}: {cpu_model()}"


def run_missing(rset: ReferenceSet, folder: Path, *, device: str = "auto", workers: int = 1,
                shard: tuple[int, int] = (0, 1), limit: int | None = None,
                only: Callable[[RunPlan], bool] | None = None, order: str = "longest",
                log: Callable[[str], None] | None = None) -> int:
    """Train the runs of `rset` that `folder` lacks (ok rows), this shard's only; append
    each record as it finishes (order: see below). Returns the number of runs trained now."""
    dev = resolve_device(device)  # a configuration error stops here, before any run
    data = load_dataset(rset.dataset, heldout="test")
    done = read_runs(folder)
    ok = set() if done.empty else {
        (r.protocol_id, r.arch_id, int(r.seed)) for r in done.itertuples() if r.status == "ok"}
    todo = [p for p in rset.plan() if p.key not in ok and shard_of(p.key, shard[1]) == shard[0]
            and (only is None or only(p))]

    @functools.cache
    def flops(arch: ArchConfig, resolution: int) -> float:
        return params_and_flops(arch, resolution, data.num_classes, data.in_chans).flops_g

    def cost(p: RunPlan) -> float:
        return flops(p.member.arch, p.protocol.resolution) * p.protocol.cost_images(
            len(data.train_y))

    # Protocol by protocol, seed by seed, so that a run cut short leaves whole seeds of the
    # first protocol; within a seed the longest first, so that workers finish together, or
    # (order="cheapest") the cheapest first, so that a short session trains the most runs.
    if order not in ("longest", "cheapest"):
        raise ValueError(f"order {order!r}: choose longest or cheapest")
    sign = -1 if order == "longest" else 1
    protocol_rank = {p.protocol_id: i for i, p in enumerate(rset.protocols)}
    seed_rank = {s: i for i, s in enumerate(rset.seeds)}
    todo.sort(key=lambda p: (protocol_rank[p.protocol.protocol_id], seed_rank[p.seed],
                             sign * cost(p), p.key))
    if limit is not None:
        todo = todo[:limit]
    out = folder / f"runs-{socket.gethostname()}-{dev.type}.jsonl"  # cpu and GPU rows apart
    jobs = [({"protocol": p.protocol.to_dict(), "arch": p.member.arch.to_dict(),
              "seed": p.seed, "role": p.member.role}, rset.dataset, str(dev), 1, workers)
            for p in todo]
    start = time.perf_counter()
    for i, row in enumerate(_execute(jobs, workers, dev.type), 1):
        _append(out, row)
        if log:
            acc = "failed: " + row["reason"] if row["status"] != "ok" else f"{row['accuracy']:.4f}"
            log(f"[{i}/{len(jobs)}] {row['protocol_id']} {row['arch_id']} ({row['role']}) seed "
                f"{row['seed']}: {acc} in {row['seconds']:.0f} s "
                f"({time.perf_counter() - start:.0f} s total)")
    return len(jobs)


def _execute(jobs: list[tuple], workers: int, device_type: str) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        for job in jobs:
            yield train_one(*job)
        return
    # CUDA cannot be used in a forked child: spawn the workers (one thread each).
    context = multiprocessing.get_context("spawn" if device_type == "cuda" else "forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(train_one, *job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def members_frame(rset: ReferenceSet, table: str | None = None) -> pd.DataFrame:
    """One row per member: arch_id, role, stratum, split, params_m and flops_g (for the
    set's dataset, at the first protocol's resolution), and latency on `table` (default:
    the set's design table)."""
    table = table or rset.design.get("latency_table")
    predict = _latency_predictor(table) if table else None
    res = rset.protocols[0].resolution
    data = load_dataset(rset.dataset, heldout="test")
    rows = []
    for m in rset.members:
        c = params_and_flops(m.arch, res, data.num_classes, data.in_chans)
        rows.append({"arch_id": m.arch_id, "role": m.role, "stratum": m.stratum,
                     "split": m.split, "arch": str(m.arch),
                     "params_m": c.params_m, "flops_g": c.flops_g,
                     **({f"latency_ms_{table}": predict(m.arch)} if predict else {})})
    return pd.DataFrame(rows)

