"""The commands behind `search.py`: search, devices, show, export.

Every user mistake becomes a `UsageError` (one line; `search.py` prints it and exits 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import platform
import secrets
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from latency_tables import LatencyPredictor
    from proxies import Proxy
    from search_space import ArchConfig, SearchSpace

    from .budget import RunBudget
    from .cache import ProxyCache
    from .config import SearchConfig
    from .objective import Objective

__all__ = ["UsageError", "search_parser", "subcommand_parser", "cmd_search", "cmd_devices",
           "cmd_show", "cmd_export", "cmd_train"]

RESULTS = Path("results")
PRESET_NAMES = ("fasternet_t0", "fasternet_t1", "fasternet_t2")
#: The clock of the run's time budget, seconds since the epoch (shared with worker processes;
#: a test swaps in a fake).
_clock: Callable[[], float] = time.time
#: Settings that decide what a trial's result means: a worker joining a study on a shared
#: --storage must match the study's on each (sampler, --trials and --workers may differ).
JOIN_KEYS = ("devices", "space_yaml", "proxy", "dataset", "budget", "seed", "objective",
             "target_latency_ms", "max_latency_ms", "max_params_m", "early_stopping")


class UsageError(Exception):
    """Bad input: the message is one line naming what is wrong and what to do."""


# ---------------------------------------------------------------------------- parsers
def search_parser() -> argparse.ArgumentParser:
    """`search.py`'s parser, generated from `SearchConfig` (`optimize.config`)."""
    from .config import search_parser

    return search_parser()


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    from .runner import STUDY_NAME

    if name == "devices":
        return argparse.ArgumentParser(prog="search.py devices",
                                       description="List the latency tables: source, runtime, "
                                       "whether verified on this machine (cached: no timing), "
                                       "provenance.")
    if name == "train":
        from train import train_parser

        return train_parser()
    if name == "show":
        p = argparse.ArgumentParser(prog="search.py show", description="Regenerate a run's "
                                    "files from its study.db and print the report.")
        p.add_argument("run", help="run folder (created if --storage is given)")
        p.add_argument("--storage", help="Optuna storage URL if not RUN/study.db")
        p.add_argument("--study-name", default=STUDY_NAME, help=f"default {STUDY_NAME}")
        return p
    p = argparse.ArgumentParser(prog="search.py export", description="Write one front member's "
                                "architecture as YAML (builds with timm's pconv_fasternet), or "
                                "with --runtime an architecture as that runtime's model file.")
    p.add_argument("run", help="run folder; with --runtime also an architecture file (.yaml/.json) "
                               "or a preset name")
    p.add_argument("--device", help="whose front to pick from (default: the run's first device)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--max-latency", type=float, help="most accurate member within MS")
    g.add_argument("--pick", help="knee | fastest | most-accurate | ARCH_ID (a run folder needs "
                                  "one of the two)")
    p.add_argument("--out", required=True, help="architecture file to write (.yaml or .json); with "
                   "--runtime the model file (.pte for executorch, .onnx for onnxruntime)")
    p.add_argument("--onnx", help="also export the deployment form to ONNX, checked with onnxruntime")
    p.add_argument("--runtime", help="executorch|onnxruntime: write the runtime's file in its "
                   "deployment form, check its logits against PyTorch and time it here")
    from search_space.forms import FORMS

    p.add_argument("--form", default="auto", help=f"auto|{'|'.join(FORMS)}: auto is the form a "
                   "table of the runtime recorded (--table, else one measured here), else the "
                   "runtime's default")
    p.add_argument("--table", help="the latency table of --runtime whose form to write and whose "
                   "prediction to print")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for the timing (default 1)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--resolution", type=int, default=224, help="input size of the exported model")
    p.add_argument("--checkpoint", help="weights to export (search.py train's checkpoint.pth.tar; "
                   "default: random weights)")
    p.add_argument("--storage", help="Optuna storage URL if not RUN/study.db")
    p.add_argument("--study-name", default=STUDY_NAME, help=f"default {STUDY_NAME}")
    return p


# ---------------------------------------------------------------------------- helpers
def _tables(devices: list[str]) -> dict[str, LatencyPredictor]:
    from latency_tables import TableNotFoundError, load_predictor

    tables = {}
    for d in devices:
        try:
            tables[d] = load_predictor(d)
        except TableNotFoundError as e:
            raise UsageError(f"--device {d}: {e}") from None
    return tables


def _check_coverage(space: SearchSpace, tables: Mapping[str, LatencyPredictor]) -> None:
    """Every layer the space can produce must be in every table (checked up front)."""
    from latency_tables import MissingLayerError

    for table in tables.values():
        try:
            table.check_coverage(space)
        except MissingLayerError as e:
            raise UsageError(str(e)) from None


#: Set to 1, the same as --trust-table for every search (a test suite or CI machine that is
#: not the machine its tables were measured on).
TRUST_ENV = "PCONV_NAS_TRUST_TABLES"


def _verify_tables(tables: Mapping[str, LatencyPredictor],
                   config: SearchConfig) -> dict[str, LatencyPredictor]:
    """Each measured table checked on this machine before any trial (`latency_tables.trust`):
    its probe networks timed here (a few seconds; cached per table and machine) against its
    predictions. Within +-10 %: recorded as verified. Outside: a `UsageError` naming the ratio,
    how the machines differ and the build that measures this one, unless --calibrate-latency
    (this machine's table, a 1-minute budgeted build, `latency_tables.here.calibrate_here`).
    A table of evidently another machine (another CPU model or architecture: a board's table
    copied to a laptop) is that machine's and labelled so, not timed. --trust-table (or
    `TRUST_ENV`) skips the timing, loudly. Derived tables and predictors that are no table
    pass as they are (their provenance says what they are)."""
    from latency_tables import LatencyTable
    from latency_tables.trust import (
        TrustError,
        another_machine,
        elsewhere,
        refusal,
        trusted,
        unverified,
        verify,
    )

    why = "--trust-table" if config.trust_table else (
        f"{TRUST_ENV}=1" if os.environ.get(TRUST_ENV, "") not in ("", "0") else None)
    out: dict[str, LatencyPredictor] = {}
    for d, table in tables.items():
        if not isinstance(table, LatencyTable) or table.source != "measured":
            out[d] = table
            continue
        if why:
            print(f"WARNING: latency table {table.name!r} is used WITHOUT checking it on this "
                  f"machine ({why}): measured on another machine, its latencies may be off by any "
                  f"amount here; check with `python -m latency_tables verify {table.name}`",
                  flush=True)  # stdout: stderr holds only the one-line errors
            out[d] = unverified(table, why)
            continue
        other = another_machine(table)
        if other:  # e.g. a board's table searched on a laptop: that board's latencies
            print(f"latency table {table.name!r} was measured on {other}, not on this machine: "
                  "its latencies are that machine's (not timed here)", flush=True)
            out[d] = elsewhere(table, other)
            continue

        def timing(archs: list[Any], name: str = table.name) -> None:
            print(f"verifying latency table {name!r} on this machine: timing {len(archs)} probe "
                  "networks (a few seconds; cached afterwards)", flush=True)

        try:
            v = verify(table, on_timing=timing)
        except TrustError as e:
            raise UsageError(f"--device {d}: {e}; use it unchecked with --trust-table") from None
        if v.verified:
            out[d] = trusted(table, v)
        elif config.calibrate_latency:  # this machine's table, built in a minute (or found)
            from latency_tables.here import calibrate_here
            from search_space import SearchSpace

            space = SearchSpace.from_file(config.space) if config.space else None
            try:
                out[d] = calibrate_here(table, v, space, say=lambda line: print(line, flush=True))
            except ValueError as e:  # e.g. a budget too small for this machine's speed
                raise UsageError(f"--calibrate-latency: {e}") from None
        else:
            raise UsageError(refusal(table, v, config.space))
    return out


def _proxy_device(config: SearchConfig) -> Any:
    """The proxy's `torch.device`, checked before anything is written."""
    from proxies import DeviceError, resolve_device

    try:
        device = resolve_device(config.proxy_device)
    except DeviceError as e:
        raise UsageError(f"--proxy-device: {e}") from None
    if config.backend == "ray" and device.type == "cuda" and (
            device.index not in (None, 0) or config.gpus_per_trial == 0):
        raise UsageError(f"--proxy-device {config.proxy_device}: Ray gives each trial its own GPU "
                         "(seen as cuda:0); use --proxy-device auto or cuda with "
                         "--gpus-per-trial > 0, or cpu")
    return device


def _workers(config: SearchConfig, device: Any) -> int:
    """--workers, or by default one concurrent trial per usable CPU core when candidates train
    on the CPU (each on one thread: `proxies.short_train`), 1 on a GPU."""
    if config.workers is not None:
        return config.workers
    if device.type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, config.trials))


def _parallel(config: SearchConfig, device: Any) -> str:
    """threads or processes for the optuna backend's --workers (`optimize.processes`)."""
    if config.parallel == "threads" and device.type == "cuda" and config.workers > 1:
        raise UsageError("--parallel threads: candidates on CUDA share process-global torch "
                         "settings across threads; use --parallel processes")
    if config.parallel is not None:
        return config.parallel
    return "processes" if device.type == "cuda" and config.workers > 1 else "threads"


def _trains_on(proxy: Proxy, device: Any) -> dict[str, str]:
    """Where and how the candidates train, for the run's first line and `run.json`."""
    import torch

    from proxies.device import determinism, device_name, precision_name

    device = getattr(proxy, "device", device)
    dtype = getattr(proxy, "dtype", torch.float32)  # zero-cost proxies score in fp32
    precision = precision_name(dtype)
    return {"device": str(device), "name": device_name(device),
            "precision": precision if precision == "fp32" else f"{precision} autocast",
            "determinism": determinism(device, getattr(proxy, "deterministic", True))}


@dataclasses.dataclass(frozen=True)
class ObjectiveFactory:
    """The run's `Objective`, built where it is called: in this process, or in a worker
    process (`optimize.processes`), where the proxy loads its dataset onto its own device.
    Picklable: the proxy is given by name and factory arguments (`proxies.make_proxy`)."""

    proxy: str
    proxy_kwargs: Mapping[str, Any]
    objective_kwargs: Mapping[str, Any]

    def __call__(self) -> Objective:
        from proxies import make_proxy

        from .objective import Objective

        return Objective(proxy=make_proxy(self.proxy, **self.proxy_kwargs), **self.objective_kwargs)

    def proxy_at(self, budget: str) -> Proxy:
        """The same proxy (factory, dataset, seed, device) at another budget: a promotion rung."""
        from proxies import make_proxy

        return make_proxy(self.proxy, **{**self.proxy_kwargs, "budget": budget})


def _search_config(args: argparse.Namespace, argv: list[str]) -> SearchConfig:
    """The search's `SearchConfig`: the command line's, or with `--resume` the stored one
    with the options given again on the command line (and its `WHERE` fields) replacing
    their stored values."""
    from .config import WHERE, SearchConfigError, from_namespace, search_parser

    try:
        stored = _stored_config(args) if args.resume and args.run_dir else None
        if stored is None:
            return from_namespace(args)
        given = vars(search_parser(only_given=True).parse_args(argv))
        return dataclasses.replace(stored, **{**given, **{k: getattr(args, k) for k in WHERE}})
    except SearchConfigError as e:
        raise UsageError(str(e)) from None


def _stored_config(args: argparse.Namespace) -> SearchConfig | None:
    """The config a run folder's (or `--storage`'s) study was started with; None when there
    is no study or it has no record (the checks that follow say so)."""
    from .config import SearchConfig
    from .storage import StorageError, StorageSpec

    run_dir = Path(args.run_dir)
    if args.storage is None and not (run_dir / "study.db").exists():
        return None
    url = args.storage or f"sqlite:///{run_dir / 'study.db'}"
    try:
        study = optuna.load_study(study_name=args.study_name, storage=StorageSpec(url).open())
    except StorageError as e:
        raise UsageError(str(e)) from None
    except KeyError:  # no study of that name yet
        return None
    run = study.user_attrs.get("run")
    return SearchConfig.from_run(run) if run else None


def open_run_study(run_dir: Path, storage: str | None, study_name: str) -> optuna.Study:
    from .storage import StorageError, StorageSpec, redact

    url = storage or f"sqlite:///{run_dir / 'study.db'}"
    if storage is None and not (run_dir / "study.db").exists():
        raise UsageError(f"{run_dir}: no study.db here; give a run folder made by search.py")
    try:
        return optuna.load_study(study_name=study_name, storage=StorageSpec(url).open())
    except StorageError as e:
        raise UsageError(str(e)) from None
    except KeyError:
        raise UsageError(f"{redact(url)}: no study named {study_name!r} in this storage") from None


def _versions() -> dict[str, str]:
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "optuna": optuna.__version__}


# ---------------------------------------------------------------------------- search
def cmd_search(args: argparse.Namespace, argv: list[str]) -> int:
    """`search.py [OPTIONS]`: `args` and `argv` are the command line (`search_parser`)."""
    started = _clock()  # --timeout counts from here (`optimize.budget`)
    from latency_tables import MissingLayerError
    from proxies import DatasetError, DeviceError
    from search_space import DEFAULT_SPACE_PATH, ArchError, SearchSpace

    from .budget import RunBudget
    from .early_stop import ParetoEarlyStopping
    from .measured import time_fronts
    from .objective import Constraints, rung_of
    from .processes import run_processes
    from .report import write_outputs
    from .runner import (
        InfeasibleSearch,
        SearchExhausted,
        StudyMismatch,
        create_or_join,
        make_sampler,
        recover_zombies,
        run_optuna,
        tally,
    )
    from .storage import StorageError, StorageSpec, redact

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = _search_config(args, argv)  # every check that needs no I/O: before anything else
    devices = config.devices
    device = _proxy_device(config)
    config = dataclasses.replace(config, workers=_workers(config, device))
    parallel = _parallel(config, device)
    promotion = config.promotion

    tables = _tables(devices)
    devices = list(tables)
    try:
        space = SearchSpace.from_file(config.space or DEFAULT_SPACE_PATH)
    except ArchError as e:
        raise UsageError(f"--space: {e}") from None
    _check_coverage(space, tables)
    tables = _verify_tables(tables, config)  # before anything is written
    max_latency = config.max_latency_ms
    # A shared storage (--storage) is opened first: a wrong URL, password or driver, or an
    # unreachable server stops the run before anything is loaded or written.
    shared = config.storage is not None
    heartbeat = config.heartbeat if config.backend == "optuna" else None
    storage_obj = None
    if shared:
        try:
            storage_obj = StorageSpec(config.storage, heartbeat_s=heartbeat).open()
        except StorageError as e:
            raise UsageError(str(e)) from None

    run_dir = Path(config.run_dir) if config.run_dir else RESULTS / (
        dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + "-".join(devices))
    if config.resume and config.storage is None and not (run_dir / "study.db").exists():
        raise UsageError(f"--resume: {run_dir} has no study.db to continue")
    if not config.resume and (run_dir / "study.db").exists():
        raise UsageError(f"{run_dir} already holds a study; add --resume to continue it or "
                         "choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--run-dir {run_dir}: not writable ({e.strerror})") from None

    proxy_name, accuracy_source = _resolve_proxy(config)
    config = dataclasses.replace(config, proxy=proxy_name)  # run.json records what ran
    make_objective = ObjectiveFactory(
        proxy=config.proxy,
        proxy_kwargs={"dataset": config.dataset, "budget": config.budget, "seed": config.seed,
                      "device": config.proxy_device},
        objective_kwargs={
            "space": space, "latency": tables, "objective": config.objective,
            "target_latency_ms": config.target_latency,
            "constraints": Constraints(max_latency_ms=max_latency, max_params_m=config.max_params),
            "early_stopping": ParetoEarlyStopping() if config.early_stopping else None,
            # Ray Tune hands out its own trial count (`optimize.ray_backend`).
            "budget": config.trials if config.backend == "optuna" else None})
    try:
        objective = make_objective()
    except DeviceError as e:  # e.g. a budget's bf16 on a GPU without it
        raise UsageError(f"--proxy-device/--budget: {e}") from None
    except DatasetError as e:
        raise UsageError(f"--dataset: {e}") from None
    except ValueError as e:
        raise UsageError(f"--proxy/--budget: {e}") from None
    proxy = objective.proxy
    trains = _trains_on(proxy, device)
    print(f"proxy on {trains['name']}: {trains['precision']}, {trains['determinism']} determinism"
          + ("" if trains["determinism"] != "best-effort" else
             " (CUDA kernels: repeatable as far as they allow, not bit-exact)")
          + f"; {config.workers} trial(s) at a time"
          + (f" ({parallel})" if config.workers > 1 and config.backend == "optuna" else ""))
    print(f"accuracy: {accuracy_source}")
    sources = {d: t.provenance_note() for d, t in tables.items()}
    for d in tables:  # a derived table's note names the command that measures the device
        print(f"latency on {d}: {sources[d]}")
    storage = config.storage or f"sqlite:///{run_dir / 'study.db'}"
    spec = StorageSpec(storage, heartbeat_s=heartbeat)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if config.objective == "score" else None
    try:
        study, created = create_or_join(storage_obj or spec.open(), objective.directions,
                                        make_sampler(config.sampler, config.seed, config.trials), pruner,
                                        study_name=config.study_name)
    except StudyMismatch as e:
        raise UsageError(f"--storage {redact(storage)}: {e}") from None
    except StorageError as e:
        raise UsageError(str(e)) from None
    if study.metric_names is None:  # named objectives in `optuna trials` and optuna-dashboard
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objective.metric_names)
    # The study's owner (the worker that created it, a --resume, or a run on its own folder)
    # scores the presets and promotes; workers that join a shared study only search.
    owner = created or config.resume or not shared
    seed = config.seed
    if not owner:
        # Workers on one study must not propose in lockstep (the same seed draws the same
        # random start-up trials); the proxy keeps --seed, so results stay comparable.
        seed = config.seed + 1 + secrets.randbelow(2**20)
        study.sampler = make_sampler(config.sampler, seed, config.trials)
    if config.resume and not shared:
        n = recover_zombies(study)
        if n:
            print(f"resume: {n} interrupted trial(s) marked FAIL and re-queued")
    stored = dict(study.user_attrs.get("run") or {})
    if not owner and "devices" not in stored and not study.trials:  # joined between its creation
        stored = _await_run_settings(study, JOIN_WAIT_S)                 # and its settings
    run = dict(stored)
    if promotion is not None and config.resume and args.promote is None:
        print(f"resume: promotion {','.join(promotion.rungs)} (eta {promotion.eta}) as started")
    run.update(name=run_dir.name, argv=["search.py", *map(redact, argv)], devices=devices, sources=sources,
               tables={d: t.provenance() for d, t in tables.items()}, seed=config.seed,
               space=str(space.source), space_yaml=Path(space.source).read_text(),
               proxy=config.proxy, accuracy_source=accuracy_source, dataset=config.dataset,
               budget=str(proxy.budget),
               fidelity=promotion.rungs[0] if promotion else config.budget,
               promote=dataclasses.asdict(promotion) if promotion else None,
               objective=config.objective, target_latency_ms=config.target_latency,
               max_latency_ms=max_latency, max_params_m=config.max_params, sampler=config.sampler,
               backend=config.backend, workers=config.workers, trials=config.trials,
               parallel=parallel if config.backend == "optuna" else None,
               gpus_per_trial=config.gpus_per_trial, proxy_device=trains,
               early_stopping=config.early_stopping, versions=_versions(),
               machine=f"{platform.machine()}, {os.cpu_count()} cores",
               storage=redact(storage), study_name=config.study_name, config=config.to_dict())
    run["runs"] = [*run.get("runs", []), dt.datetime.now().isoformat(timespec="seconds")]
    run = json.loads(json.dumps(run, default=str))
    if not owner:  # joining: the study's settings, not this command's
        if "devices" in stored:
            _check_join(stored, run, config.study_name)
        else:  # its creator never published them (it stopped before): this worker does
            study.set_user_attr("run", run)
        print(f"joined study {config.study_name!r}: {len(study.trials)} trial(s) so far; the worker "
              f"that created it scores the presets", flush=True)
    else:
        study.set_user_attr("run", run)
    print(f"run folder: {run_dir}  (study: {redact(storage)}, {config.study_name})")

    rungs = promotion.rungs if promotion else (config.budget,)
    cache = _preset_cache(config, objective.proxy, device)
    pending = _presets_to_score(study, rungs[0], cache) if owner else None
    budget = RunBudget(seconds=config.timeout if 0 < config.timeout < math.inf else None,
                       start=started, presets=len(pending or ()), clock=_clock)
    print(_budget_line(budget, pending, cache), flush=True)
    start = time.perf_counter()
    progress = _Progress(config.trials, devices, start)
    exhausted = False
    try:
        if config.backend == "ray":
            from .ray_backend import ClusterError, run_ray

            try:  # Ray Tune ends its trials at its own time budget: the time left for them
                run_ray(study=study, storage=storage, objective=objective, n_trials=config.trials,
                        timeout=max(budget.for_trials(), 1.0) if budget.limited else None,
                        workers=config.workers, address=config.ray_address,
                        seed=config.seed, gpus_per_trial=config.gpus_per_trial, on_trial=progress,
                        run_dir=run_dir)
            except ClusterError as e:
                raise UsageError(str(e)) from None
        elif parallel == "processes":
            run_processes(study, storage=spec, make_objective=make_objective,
                          make_sampler=functools.partial(make_sampler, config.sampler,
                                                         n_trials=config.trials),
                          seed=seed, n_trials=config.trials, workers=config.workers,
                          budget=budget, on_trial=progress)
        else:
            run_optuna(study, objective, config.trials, budget=budget, workers=config.workers,
                       on_trial=progress)
    except SearchExhausted as e:  # what was found is valid: say why it is less, and report it
        print(e, flush=True)
        exhausted = True
    except (MissingLayerError, InfeasibleSearch) as e:
        raise UsageError(str(e)) from None
    done = tally(study.get_trials(deepcopy=False)).evaluated
    short = budget.limited and not exhausted and done < config.trials  # the budget ended them
    if short:
        print(budget.shortfall(done, config.trials), flush=True)
    if owner:  # run.json and report.md say what the budget allowed
        run["time_budget"] = {"seconds": budget.seconds, "evaluated": done, "trials": config.trials,
                              "note": budget.shortfall(done, config.trials) if short else None}
        study.set_user_attr("run", run)
    proxy_at = functools.cache(lambda k: make_objective.proxy_at(rungs[k]) if k else objective.proxy)
    if not owner:
        write_outputs(run_dir, study)
        print(f"\nsearch done; wrote {run_dir}/ from the study as it stands (regenerate it later "
              f"with `python search.py show {run_dir} --storage URL --study-name "
              f"{config.study_name}`)")
        return 0
    if promotion is not None:
        if shared:
            _wait_for_workers(study)
        from .promote import promote

        print(f"promotion: rungs {' -> '.join(rungs)}, eta {promotion.eta}", flush=True)
        promote(study, objective, rungs=rungs, proxy_at=proxy_at, eta=promotion.eta,
                on_trial=progress)
    top = min(len(rungs) - 1, max((rung_of(t) for t in study.get_trials(deepcopy=False)
                                   if t.state == optuna.trial.TrialState.COMPLETE), default=0))
    _score_presets(study, objective.describe, proxy_at(top), rungs[top],
                   cache=_preset_cache(config, proxy_at(top), device))
    _print_costs(study)
    time_fronts(study, tables, say=lambda line: print(line, flush=True))  # `optimize.measured`
    fronts = write_outputs(run_dir, study)
    _print_fronts(fronts)
    print(f"\nwrote {run_dir}/: trials.csv pareto.csv pareto.png report.md archs/ run.json "
          f"({time.perf_counter() - start:.0f} s); pick one with `python search.py export "
          f"{run_dir} --pick knee --out arch.yaml`")
    return 0


JOIN_WAIT_S = 30.0  # how long a joining worker waits for the creator to publish the run settings


def _await_run_settings(study: optuna.Study, timeout_s: float,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The run settings the study's creator stores just after creating it (a worker that joins
    in between waits for them, so it checks against them instead of overwriting them); {} if
    they do not appear within `timeout_s`."""
    deadline = clock() + timeout_s
    while True:
        stored = dict(study.user_attrs.get("run") or {})
        if "devices" in stored or clock() >= deadline:
            return stored
        sleep(0.5)


def _check_join(stored: Mapping[str, Any], mine: Mapping[str, Any], study_name: str) -> None:
    """A worker joining a study must score candidates as the study does (`JOIN_KEYS`)."""
    for key in JOIN_KEYS:
        if stored.get(key) != mine.get(key):
            shown = "the space file" if key == "space_yaml" else f"{stored.get(key)!r}"
            raise UsageError(f"study {study_name!r} was started with {key} {shown}, this command "
                             f"gives {'another' if key == 'space_yaml' else repr(mine.get(key))}; "
                             "start the worker with the study's settings or give another "
                             "--study-name")


def _wait_for_workers(study: optuna.Study) -> None:
    """Until no trial of the study runs (other workers' last trials), failing the ones whose
    worker died (heartbeats): promotion ranks the finished trials."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if is_heartbeat_enabled(study._storage):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        time.sleep(1.0)  # other workers' trials take seconds to minutes


class _Progress:
    """One live line per finished trial: count, outcome, front size, elapsed, ETA."""

    def __init__(self, n_trials: int, devices: list[str], start: float) -> None:
        self.n, self.devices, self.start = n_trials, devices, start

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from .runner import describe_trial, evaluated

        trials = study.get_trials(deepcopy=False)
        done = sum(evaluated(t) for t in trials)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(done, 1) * max(self.n - done, 0)
        ua = trial.user_attrs
        lat = " ".join(f"{d}={ua['latency_ms'][d]:.2f}ms" for d in self.devices
                       if d in ua.get("latency_ms", {}))
        acc = f"acc={ua['accuracy']:.3f}" if "accuracy" in ua else ""
        line = (f"[{done}/{self.n}] trial {trial.number}: {describe_trial(trial)} {acc} {lat} | "
                f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s")
        print(line, flush=True)


def _resolve_proxy(config: SearchConfig) -> tuple[str, str]:
    """(the proxy to run, where its accuracy comes from). `auto` is the learned estimate
    (`proxies.estimate`) where one is fitted for the dataset and budget, else short_train."""
    from proxies import Budget
    from proxies.estimate import EstimateError, EstimateModel, compatible

    def trained(name: str) -> str:
        return f"{name}: accuracy on the validation split after the `{config.budget}` budget"

    if config.proxy not in ("auto", "estimate"):
        return config.proxy, trained(config.proxy)
    try:
        model = EstimateModel.load(config.dataset)
        compatible(model, dataset=config.dataset, budget=Budget.parse(config.budget))
    except EstimateError as e:
        if config.proxy == "estimate":
            raise UsageError(f"--proxy estimate: {e}") from None
        return "short_train", f"{trained('short_train')} (auto; no estimate applies: {e})"
    except ValueError as e:
        raise UsageError(f"--budget: {e}") from None
    if config.promote is not None:  # auto with promotion: rungs need a training proxy
        return "short_train", f"{trained('short_train')} (auto: --promote trains at several budgets)"
    return "estimate", f"estimate: {model.provenance}"


def _preset_cache(config: SearchConfig, proxy: Proxy, device: Any) -> ProxyCache | None:
    """The disk cache of `proxy`'s results on the presets (`optimize.cache`); None with
    --no-cache."""
    from .cache import ProxyCache

    if not config.cache:
        return None
    trains = _trains_on(proxy, device)
    where = (f"{trains['name']}, {trains['precision']}, {trains['determinism']} determinism, "
             f"{getattr(proxy, 'threads', 1)} thread(s)")
    return ProxyCache(proxy, dataset=config.dataset, device=where)


def _stored_presets(study: optuna.Study, fidelity: str) -> dict[str, dict[str, Any]]:
    """The presets already scored on the study at `fidelity` (a resumed run), by name."""
    base = (study.user_attrs.get("run") or {}).get("fidelity", fidelity)
    return {name: rec for name, rec in (study.user_attrs.get("presets") or {}).items()
            if rec.get("fidelity", base) == fidelity}


def _presets_to_score(study: optuna.Study, fidelity: str, cache: ProxyCache | None) -> list[str]:
    """The presets `_score_presets` will train at `fidelity`: neither on the study nor cached."""
    from search_space import PRESETS

    stored = _stored_presets(study, fidelity)
    return [name for name in PRESET_NAMES if name not in stored
            and (cache is None or cache.get(PRESETS[name]) is None)]


def _budget_line(budget: RunBudget, pending: list[str] | None, cache: ProxyCache | None) -> str:
    """The line before the trials: the time budget and what it keeps for the presets
    (`pending`: the presets to train after the trials; None: this worker scores none)."""
    line = (f"time budget: {budget.seconds:g} s for the whole run (--timeout; 0: none)"
            if budget.limited else "time budget: none (--timeout 0)")
    if pending is None:
        return line
    where = f"{cache.root}" if cache is not None else "--no-cache"
    if not pending:
        return f"{line}; presets: cached ({where})"
    return f"{line}; presets: {len(pending)} to score after the trials ({where})"


def _score_presets(study: optuna.Study, describe: Callable[[ArchConfig], dict[str, Any]],
                   proxy: Proxy, fidelity: str, cache: ProxyCache | None = None) -> None:
    """Score T0/T1/T2 with the run's tables (`describe`) and `proxy`, the fidelity of the
    highest rung the search reached, so that they compare with the front (once per study
    and fidelity; stored on it). With a `cache`, a result stored by an earlier run with the
    same proxy, dataset, budget, seed and code is reused, and a new one stored."""
    from latency_tables import MissingLayerError
    from search_space import PRESETS

    scored = dict(study.user_attrs.get("presets") or {})
    stored = _stored_presets(study, fidelity)
    for name in PRESET_NAMES:
        if name in stored:
            continue
        arch = PRESETS[name]
        try:
            info = describe(arch)
        except MissingLayerError as e:  # a table that lacks a preset's layers: say so, keep going
            scored[name] = {"arch": arch.to_dict(), "latency_ms": {}, "reason": str(e)}
            continue
        hit = cache.get(arch) if cache is not None else None
        result = hit.result if hit is not None else proxy(arch)
        if cache is not None and hit is None and not result.failed and not cache.put(arch, result):
            print(f"note: cannot write the preset cache {cache.root}; the next run scores "
                  f"{name} again", flush=True)
        scored[name] = {"arch": arch.to_dict(), "latency_ms": info["latency_ms"],
                        "params_m": info["params_m"], "proxy_seconds": result.seconds,
                        "accuracy": None if result.failed else float(
                            result.score if result.accuracy is None else result.accuracy),
                        "reason": result.reason, "fidelity": fidelity,
                        "accuracy_se": result.uncertainty,
                        "cached_from": None if hit is None else hit.stored.isoformat()}
        print(f"preset {name} ({fidelity}): acc={scored[name]['accuracy']} "
              + " ".join(f"{d}={ms:.2f}ms" for d, ms in info["latency_ms"].items())
              + ("" if hit is None else f" [cached from {hit.stored:%Y-%m-%d %H:%M}]"), flush=True)
        study.set_user_attr("presets", scored)


def _print_costs(study: optuna.Study) -> None:
    """Seconds of proxy training per rung, when the run promoted candidates."""
    from .report import collect, rung_costs

    costs = rung_costs(collect(study))
    if len(costs) > 1:
        print("\nproxy time per rung: " + "; ".join(
            f"rung {c.rung} ({c.fidelity}): {c.trained} trained, {c.seconds:.0f} s" for c in costs))


def _print_fronts(fronts: list[Any]) -> None:
    import textwrap

    from .report import accuracy_error, tie_note, ties_with_best

    for f in fronts:
        print(f"\nPareto front on {f.device} ({f.source}):")
        rows = [(c, "") for c in f.members] + [(p, "preset") for p in f.presets]
        w = max([8, *(len(c.fidelity) for c, _ in rows)])  # fidelity names: quick, or key=value,...
        ties = ties_with_best(f)
        here = bool(f.measured)
        print(f"  {'name':14s} {'proposed':>8s} {'fidelity':>{w}s} {'accuracy':>8s} "
              + (f"{'±95%':>6s} {'vs best':>7s} " if ties else "")
              + f"{'ms/image':>9s} " + (f"{'here ms':>8s} " if here else "")
              + f"{'params M':>8s}  arch")
        for c, tag in sorted(rows, key=lambda r: r[0].latency_ms.get(f.device, 0.0)):
            acc = "-" if c.accuracy is None else f"{c.accuracy:.4f}"
            proposed = "" if tag else f"x{c.proposed}"
            err = accuracy_error(c)
            band = (f"{'-' if err is None else f'{1.96 * err:.3f}':>6s} "
                    f"{'preset' if tag else 'tie' if ties.get(c.arch_id) else 'below':>7s} "
                    if ties else "")
            ms_here = f.measured.get(c.arch_id)
            col = (f"{'-' if ms_here is None else f'{ms_here:.2f}':>8s} " if here else "")
            print(f"  {c.name:14s} {proposed:>8s} {c.fidelity or '-':>{w}s} {acc:>8s} {band}"
                  f"{c.latency_ms[f.device]:9.2f} {col}{(c.params_m or 0):8.2f}  "
                  f"{c.arch_id if not tag else '(preset)'} {c.arch}")
        note = f.measured_note()
        if note:
            print("  " + textwrap.fill(note, width=96, subsequent_indent="  "))
        if ties:
            print("  " + textwrap.fill(tie_note(f).replace("`tie`", "tie"), width=96,
                                       subsequent_indent="  "))


# ---------------------------------------------------------------------------- others
def cmd_devices(args: argparse.Namespace) -> int:
    from latency_tables import available, load_predictor

    names = available()
    if not names:
        print("no latency tables; measure one with `python -m latency_tables build --device NAME`")
    for name in names:
        table = load_predictor(name)
        meta = table.provenance()
        print(f"{name:12s} {meta.get('source', 'unknown'):9s} {meta.get('runtime', 'eager'):11s} "
              f"{_here(table):24s} {table.provenance_note()}")
    return 0


def _here(table: LatencyPredictor) -> str:
    """Whether a measured table holds on this machine, from the verification cache (no timing)."""
    from latency_tables import LatencyTable
    from latency_tables.trust import cached_verification

    if not isinstance(table, LatencyTable) or table.source != "measured":
        return "-"
    v = cached_verification(table)
    if v is None:
        return "not verified here"
    return f"verified here {v.date[:10]}" if v.verified else f"FAILS here (x{v.ratio:.2f})"


def cmd_show(args: argparse.Namespace) -> int:
    from .report import write_outputs

    run_dir = Path(args.run)
    study = open_run_study(run_dir, args.storage, args.study_name)
    write_outputs(run_dir, study)
    print((run_dir / "report.md").read_text())
    return 0


def front_member(run_dir: Path, *, device: str | None, pick: str | None,
                 max_latency: float | None, storage: str | None = None,
                 study_name: str | None = None) -> tuple[Any, str]:
    """(the chosen `Candidate`, its front's device): a run's front member by `pick` or
    `max_latency` (`optimize.export.select`), on `device` (default: the run's first)."""
    from .export import select
    from .report import collect, fronts, presets_of
    from .runner import STUDY_NAME

    study = open_run_study(run_dir, storage, study_name or STUDY_NAME)
    run = study.user_attrs.get("run") or {}
    sources = run.get("sources") or {}
    device = device or next(iter(sources), None)
    if device not in sources:
        raise UsageError(f"--device {device!r}: this run searched {', '.join(sources) or 'nothing'}")
    front = next(f for f in fronts(collect(study), presets_of(study), sources) if f.device == device)
    try:
        return select(front, pick=pick, max_latency_ms=max_latency), device
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_export(args: argparse.Namespace) -> int:
    from search_space import ArchError

    from .export import export_onnx

    if args.runtime:
        return _export_runtime(args)
    if args.pick is None and args.max_latency is None:
        raise UsageError("export: one of --pick or --max-latency is required")
    chosen, device = front_member(Path(args.run), device=args.device, pick=args.pick,
                                  max_latency=args.max_latency, storage=args.storage,
                                  study_name=args.study_name)
    out = Path(args.out)
    try:
        chosen.arch.save(out)
    except ArchError as e:
        raise UsageError(f"--out: {e}") from None
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write ({e.strerror})") from None
    print(f"{chosen.name} {chosen.arch_id}: accuracy {chosen.accuracy:.4f}, "
          f"{chosen.latency_ms[device]:.2f} ms on {device} -> {out}\n  {chosen.arch}\n"
          f"  build: timm.create_model('pconv_fasternet', arch='{out}', num_classes=...)")
    if args.onnx:
        diff = export_onnx(chosen.arch, Path(args.onnx))
        print(f"  onnx: {args.onnx} (onnxruntime matches PyTorch, max |diff| {diff:.1e})")
    return 0


def _export_runtime(args: argparse.Namespace) -> int:
    """`search.py export RUN|ARCH.yaml --runtime R --out FILE`: `export.export_runtime`."""
    from latency_tables import TableNotFoundError
    from search_space.forms import deploy_form

    from .export import export_form, export_runtime

    path = Path(args.run)
    if path.is_dir():
        if args.pick is None and args.max_latency is None:
            raise UsageError("export: a run folder needs --pick or --max-latency")
        chosen, device = front_member(path, device=args.device, pick=args.pick,
                                      max_latency=args.max_latency, storage=args.storage,
                                      study_name=args.study_name)
        arch = chosen.arch
        origin = (f"{chosen.name} {chosen.arch_id} of {path}: {chosen.latency_ms[device]:.2f} ms "
                  f"per image on {device} (predicted by table {device!r}: {_table_words(device)})")
    else:
        arch, origin = _train_arch(args.run, args.pick)
    try:
        if args.form == "auto":
            form, why, table = export_form(args.runtime, args.table)
        else:
            deploy_form(args.form)
            form, why = args.form, "--form"
            table = export_form(args.runtime, args.table)[2] if args.table else None
        result = export_runtime(arch, Path(args.out), runtime=args.runtime, form=form,
                                threads=args.threads, num_classes=args.num_classes,
                                in_chans=args.in_chans, resolution=args.resolution,
                                checkpoint=args.checkpoint)
    except (ValueError, TableNotFoundError) as e:  # unknown/missing runtime, lowering, check
        raise UsageError(str(e).splitlines()[0]) from None
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot write ({e.strerror})") from None
    print(f"{origin}\n  {arch}\n-> {result.path}: {result.runtime_label}, {form} form ({why}); "
          f"every op inside the delegate; export {result.export_s:.1f} s\n"
          f"  logits match PyTorch eager: max |diff| {result.max_abs_diff:.1e} (tolerance "
          f"{result.tolerance:.1e})\n  {result.latency_line()}")
    if table is not None and table.covers(arch, args.resolution):
        print(f"  {table.predict(arch, args.resolution):.2f} ms per image predicted by table "
              f"{table.name!r} ({_table_words(table.name)})")
    return 0


def _table_words(name: str) -> str:
    """"measured on AMD EPYC, eager PyTorch 2.14.1, fused form, calibrated"."""
    from latency_tables import LatencyTable, TableNotFoundError

    try:
        t = LatencyTable.load(name)
    except TableNotFoundError:
        return "no such table here"
    dev = t.meta.get("device", {})
    hw = dev.get("gpu_name") or dev.get("cpu_model") or "unknown device"
    calibrated = "calibrated" if t.meta.get("correction") else "uncalibrated sum of layers"
    return f"{t.source} on {hw}, {t.runtime_label()}, {calibrated}"


def cmd_train(args: argparse.Namespace) -> int:
    """`search.py train RUN|ARCH.yaml`: `train.train` on one architecture (run folder members
    picked as `cmd_export` picks them); `args` holds only the options given (`train_parser`)."""
    from train import TrainConfig, TrainError, TrainingDiverged, stored_config, train
    from train.config import WHERE

    arch, origin = _train_arch(args.source, getattr(args, "pick", None))
    given = {k: v for k, v in vars(args).items() if k not in ("source", "pick")}
    out = Path(given.get("out") or RESULTS / "train" / arch.arch_id)
    try:
        stored = (stored_config(out) or {}) if given.get("resume") else {}
        kept = {k: v for k, v in stored.items() if k not in WHERE}
        config = TrainConfig.from_dict({**kept, **given, "out": str(out)})
    except TrainError as e:
        raise UsageError(str(e)) from None
    main = int(os.environ.get("RANK", 0)) == 0  # under torchrun, rank 0 prints
    if main:
        print(f"training {origin}: {arch}", flush=True)
    try:
        result = train(arch, config, progress=True, log=print)
    except TrainError as e:
        raise UsageError(str(e)) from None
    except TrainingDiverged as e:
        print(f"error: {e}; the last finished epoch is in {out}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last finished epoch is in {out}/checkpoint.pth.tar; continue "
              "with --resume", file=sys.stderr)
        return 130
    if not main:
        return 0
    epochs, procs = len(result.history), result.world_size
    print(f"test accuracy {100 * result.accuracy:.2f} % on {result.heldout}, after {epochs} "
          f"epoch{'s' * (epochs != 1)} on {result.n_train} training images ({result.device}, "
          f"{result.precision}, {procs} process{'es' * (procs != 1)}, {result.seconds:.0f} s)")
    if result.accuracy_ema is not None:
        print(f"EMA weights {100 * result.accuracy_ema:.2f} % (timm's loader takes them; "
              "load_checkpoint(..., use_ema=False) the trained ones)")
    print(f"wrote {out}/: checkpoint.pth.tar epochs.csv arch.yaml train.json\n"
          f"  load: timm.create_model('pconv_fasternet', arch='{out / 'arch.yaml'}', "
          f"num_classes={result.num_classes}, in_chans={result.in_chans}, "
          f"checkpoint_path='{out / 'checkpoint.pth.tar'}')")
    return 0


def _train_arch(source: str, pick: str | None) -> tuple[ArchConfig, str]:
    """The architecture `search.py train` trains, and where it comes from (one line)."""
    from search_space import ArchError, resolve_arch

    path = Path(source)
    if path.is_dir():
        chosen, device = front_member(path, device=None, pick=pick or "knee", max_latency=None)
        return chosen.arch, f"{chosen.name} {chosen.arch_id} of {path} (--pick {pick or 'knee'} " \
                            f"on {device})"
    if pick is not None:
        raise UsageError(f"--pick selects a front member of a run folder; {source} is not a folder")
    try:
        arch = resolve_arch(source)
    except ArchError as e:
        raise UsageError(str(e)) from None
    return arch, f"{arch.arch_id} ({source})"
