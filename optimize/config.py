"""`SearchConfig`: the configuration of one search, declared once.

Each field of `SearchConfig` is one option of `search.py`: its type and default are the
field's, its flag, help text, choices and rule sit in the field's metadata (`option`). The
argparse parser (`search_parser`), the validation (one line naming the option, the value and
the rule, as Optuna's constructors do), the ``config`` record of `run.json` (`to_dict`,
`from_run`, which `--resume` reloads) and the option list of optimize/README.md
(`options_markdown`) are derived from these declarations: adding a search option is adding a
field here (and its test), then using it where the search needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .runner import SAMPLERS, STUDY_NAME
from .storage import GRACE_HEARTBEATS, redact

__all__ = ["SearchConfig", "SearchConfigError", "Promotion", "option", "search_parser",
           "from_namespace", "flag_of", "check_options", "options_markdown", "HEARTBEAT_S", "WHERE"]

# Seconds between heartbeats of a running trial: one small write each; a killed worker's
# trial is re-queued after 4 missed ones (`optimize.storage.GRACE_HEARTBEATS`), i.e. 40 s.
HEARTBEAT_S = 10
#: The fields that say where a run is: `--resume` takes them from its own command line (the
#: stored config is found through them), every other field from the stored config unless
#: given again.
WHERE = ("run_dir", "resume", "storage", "study_name")
_DESCRIPTION = ("Multi-objective search over FasterNet-style PConv networks. Other commands: "
                "`search.py devices`, `search.py show RUN`, `search.py export RUN ...`.")


class SearchConfigError(ValueError):
    """An impossible search configuration: one line naming the option, the value and the rule."""


Check = Callable[[Any], "str | None"]


def option(default: Any, *, help: str, flag: str | None = None,
           choices: tuple[str, ...] | None = None, check: Check | None = None,
           metavar: str | None = None, negative: str | None = None,
           negative_help: str | None = None) -> Any:
    """A `SearchConfig` field: `default`, and for the parser `help`, `flag` (default
    ``--field-name``), `choices` and `metavar`; `check(value)` returns the rule a value breaks
    ("must be >= 1") or None (not called for None). A bool field is a switch; with `negative`
    (``--no-...``, its help `negative_help`) the two flags are mutually exclusive."""
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "choices": choices, "check": check, "metavar": metavar,
        "negative": negative, "negative_help": negative_help})


def _at_least(low: float, unit: str = "") -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}{unit}"


def _positive(unit: str) -> Check:
    return lambda v: f"must be > 0{unit}" if v <= 0 else None


def _not_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"  # also NaN


@dataclasses.dataclass(frozen=True)
class Promotion:
    """`--promote` and `--eta`, checked: the rung budgets as named (rung 0 is the search's
    budget) and the reduction factor."""

    rungs: tuple[str, ...]
    eta: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """What a search was asked to do (`search.py --help`); validated on construction.

    Latency tables, the proxy's device and the storage are opened by the CLI (they need I/O);
    everything that can be checked from the values alone is checked here.
    """

    device: str = option("auto", help="latency table(s) to optimize for, comma-separated (e.g. "
                         "arm or arm,gpu); `search.py devices` lists them; default: this machine")
    calibrate_latency: bool = option(False, help="where a measured table does not hold on this "
                                     "machine (its probe networks, timed here before any trial, "
                                     "are outside +-10 %% of their time at build or of its "
                                     "predictions), measure this "
                                     "machine's table in a 1-minute budgeted build (kept: the "
                                     "next search finds it) and use it (default: refuse, naming "
                                     "the build that measures this machine)")
    trust_table: bool = option(False, help="use measured tables without timing their probes here "
                               "(said loudly: on another machine their latencies may be off by any "
                               "amount); PCONV_NAS_TRUST_TABLES=1 does the same for every search")
    trials: int = option(40, check=_at_least(1), help="distinct architectures to evaluate "
                         "(default 40; infeasible candidates and repeated proposals, never "
                         "trained, do not count)")
    timeout: float = option(600.0, check=_at_least(0, " seconds (0: no budget)"),
                            metavar="SECONDS", help="wall-clock budget of the whole run in "
                            "seconds, from the command's start to its last report (default 600); "
                            "a trial is started only if the trials measured so far say it ends in "
                            "time, keeping time for the presets (none when cached) and the "
                            "reports; 0: no budget")
    space: str | None = option(None, help="search space YAML (default: search_space/default.yaml)")
    proxy: str = option("auto", help="accuracy proxy (proxies.PROXIES) or auto (default): the "
                        "learned estimate where one is fitted for --dataset and --budget "
                        "(proxies/estimates/), else short_train")
    dataset: str = option("fashion-mnist", help="fashion-mnist (default), cifar10, cifar100 or "
                          "imagefolder:PATH")
    budget: str = option("quick", help="proxy fidelity: smoke|quick|full or key=value,... "
                         "(default quick)")
    promote: str | None = option(None, help="multi-fidelity promotion after the search (MO-ASHA): "
                                 "rung budgets, the search's --budget first, e.g. quick,full "
                                 "(names or key=value specs as --budget takes; ';' separates "
                                 "rungs explicitly); default: off")
    eta: int | None = option(None, check=_at_least(2, " (each rung keeps 1/eta of its candidates)"),
                             help="with --promote: each rung promotes the best 1/eta of its "
                             "candidates (default 3)")
    objective: str = option("pareto", choices=("pareto", "score"), help="pareto: accuracy vs "
                            "every device's latency (default); score: MnasNet reward "
                            "ACC*(LAT/T)^-0.07 with --target-latency")
    target_latency: float | None = option(None, check=_positive(" ms"),
                                          help="T of the MnasNet reward, ms")
    max_latency: str | None = option(None, help="hard latency limit in ms for every device, or "
                                     "DEVICE=MS,...; violators are never trained")
    max_params: float | None = option(None, check=_positive(" (millions)"),
                                      help="hard limit on parameters, millions")
    sampler: str = option("tpe", choices=SAMPLERS, help="Optuna sampler (default tpe)")
    backend: str = option("optuna", choices=("optuna", "ray"), help="optuna: local loop "
                          "(default); ray: Ray Tune with OptunaSearch")
    workers: int | None = option(None, check=_at_least(1), help="concurrent trials (default: "
                                 "one per usable CPU core when candidates train on the CPU, each "
                                 "on one thread; 1 on a GPU)")
    proxy_device: str = option("auto", help="where candidates train: auto (CUDA when available; "
                               "default), cpu, cuda or cuda:N")
    parallel: str | None = option(None, choices=("threads", "processes"), help="how --workers run "
                                  "with the optuna backend (default: processes on CUDA, threads "
                                  "on the CPU)")
    ray_address: str | None = option(None, help="existing Ray cluster (default: start a local Ray)")
    gpus_per_trial: float | None = option(None, check=_not_negative, help="GPUs each Ray trial "
                                          "requests; a fraction packs several per GPU, 0.25: four "
                                          "(default 1 when the cluster has GPUs, else 0)")
    storage: str | None = option(None, help="Optuna storage shared by every worker started on it: "
                                 "postgresql://USER:PASSWORD@HOST/DB, sqlite:///PATH or "
                                 "journal:/PATH/study.log (default: sqlite in the run folder); "
                                 "workers on one storage and --study-name share one study and its "
                                 "--trials")
    study_name: str = option(STUDY_NAME, help=f"the study in --storage (default {STUDY_NAME})")
    heartbeat: int = option(HEARTBEAT_S, check=_at_least(1, " second"), help="seconds between a "
                            f"running trial's heartbeats (default {HEARTBEAT_S}); a trial silent "
                            f"for {GRACE_HEARTBEATS} heartbeats (its worker killed) is failed and "
                            "re-queued")
    run_dir: str | None = option(None, help="run folder (default: results/<date>-<devices>)")
    resume: bool = option(False, help="continue the study in --run-dir (its options as stored in "
                          "run.json, unless given again)")
    early_stopping: bool = option(False, help="Pareto early stopping at proxy checkpoints (pareto "
                                  "objective; off by default: at the quick budget's lr 5e-4 "
                                  "accuracy at half the budget does not predict the final one)",
                                  negative="--no-early-stopping",
                                  negative_help="train every candidate to the end (the default)")
    seed: int = option(0, help="seed of the sampler and the proxy")
    cache: bool = option(True, help="reuse the presets' proxy results stored on disk by earlier "
                         "runs with the same proxy, dataset, budget, seed and code "
                         "($PCONV_NAS_CACHE/presets, by default ~/.cache/pconv-nas/presets)",
                         negative="--no-cache", negative_help="score the presets again, neither "
                         "reading nor writing the cache")

    def __post_init__(self) -> None:
        check_options(self, SearchConfigError)
        self._check_together()

    def _check_together(self) -> None:
        """The rules that involve several options."""
        if not self.devices:
            raise SearchConfigError("--device: name at least one latency table (see "
                                    "`search.py devices`)")
        if self.objective == "score" and (len(self.devices) != 1 or not self.target_latency):
            raise SearchConfigError("--objective score needs exactly one --device and "
                                    "--target-latency MS")
        if self.calibrate_latency and self.trust_table:
            raise SearchConfigError("--calibrate-latency measures this machine where a table "
                                    "does not hold, --trust-table skips checking it: give one")
        if self.resume and not self.run_dir:
            raise SearchConfigError("--resume needs --run-dir (the run folder to continue)")
        if self.backend == "ray" and (self.study_name != STUDY_NAME
                                      or (self.storage or "").startswith("journal:")):
            raise SearchConfigError("--study-name and journal: storage apply to --backend optuna "
                                    "(Ray's workers load the study from a database URL)")
        if self.gpus_per_trial is not None and self.backend != "ray":
            raise SearchConfigError("--gpus-per-trial applies to --backend ray")
        if self.parallel is not None and self.backend != "optuna":
            raise SearchConfigError("--parallel applies to --backend optuna (Ray runs its own "
                                    "workers)")
        if self.proxy == "estimate" and self.promote is not None:
            raise SearchConfigError("--proxy estimate scores the one budget it was fitted with; "
                                    "--promote trains at several: use --proxy short_train (or auto)")
        self.promotion  # noqa: B018 (parsed here for its errors)
        self.max_latency_ms  # noqa: B018

    # ------------------------------------------------------------------ derived values
    @property
    def devices(self) -> list[str]:
        """`device` as a list of table names."""
        return [d.strip() for d in self.device.split(",") if d.strip()]

    @property
    def max_latency_ms(self) -> dict[str, float]:
        """`max_latency` per device, ms ({} without a limit)."""
        if not self.max_latency:
            return {}
        out: dict[str, float] = {}
        for part in self.max_latency.split(","):
            dev, sep, ms = part.rpartition("=")
            try:
                value = float(ms)
            except ValueError:
                raise SearchConfigError(f"--max-latency: {part!r} is not MS or DEVICE=MS") from None
            if value <= 0:
                raise SearchConfigError(f"--max-latency: {value} must be > 0 ms")
            for d in [dev] if sep else self.devices:
                if d not in self.devices:
                    raise SearchConfigError(f"--max-latency: {d!r} is not one of the searched "
                                            f"devices ({', '.join(self.devices)})")
                out[d] = value
        return out

    @property
    def promotion(self) -> Promotion | None:
        """`promote` and `eta` checked against `budget`, or None (off)."""
        if self.promote is None:
            if self.eta is not None:
                raise SearchConfigError("--eta applies with --promote")
            return None
        from proxies import Budget

        from .promote import parse_rungs

        try:
            rungs = parse_rungs(self.promote)
            budgets = [Budget.parse(r) for r in rungs]
            search_budget = Budget.parse(self.budget)
        except ValueError as e:
            raise SearchConfigError(f"--promote: {e}") from None
        if budgets[0] != search_budget:
            raise SearchConfigError(f"--promote: the first rung ({rungs[0]}) must be the search's "
                                    f"--budget ({self.budget})")
        for (a, ba), (b, bb) in zip(zip(rungs, budgets), zip(rungs[1:], budgets[1:])):
            if not bb.cost > ba.cost:
                raise SearchConfigError(f"--promote: rung {b!r} ({bb.cost:g} M image-pixels) must "
                                        f"cost more than rung {a!r} before it ({ba.cost:g})")
        return Promotion(rungs=tuple(rungs), eta=3 if self.eta is None else self.eta)

    # ------------------------------------------------------------------ file form
    def to_dict(self) -> dict[str, Any]:
        """The ``config`` record of `run.json` (the storage URL without its password)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if out["storage"] is not None:
            out["storage"] = redact(out["storage"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """The inverse of `to_dict`; unknown keys are refused (with the nearest name), missing
        ones take their defaults (a record written before the option existed)."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise SearchConfigError(f"search config: unknown option {key!r}{hint}")
        return cls(**data)

    @classmethod
    def from_run(cls, run: Mapping[str, Any]) -> SearchConfig:
        """The config of a run from its `run.json` (or the study's ``run`` attribute): the
        ``config`` record, or for a run folder written before it existed, the settings that
        run recorded (`devices`, `trials`, ...): options it did not record take their defaults,
        and the `WHERE` fields come from the command line that resumes it."""
        if "config" in run:
            return cls.from_dict(run["config"])
        old: dict[str, Any] = {"device": ",".join(run.get("devices") or []) or "auto"}
        for key, name in (("trials", "trials"), ("seed", "seed"), ("proxy", "proxy"),
                          ("dataset", "dataset"), ("objective", "objective"),
                          ("target_latency_ms", "target_latency"), ("max_params_m", "max_params"),
                          ("sampler", "sampler"), ("backend", "backend"), ("workers", "workers"),
                          ("gpus_per_trial", "gpus_per_trial"), ("study_name", "study_name"),
                          ("early_stopping", "early_stopping"), ("fidelity", "budget")):
            if run.get(key) is not None:
                old[name] = run[key]
        limits = run.get("max_latency_ms") or {}
        if limits:
            old["max_latency"] = ",".join(f"{d}={ms}" for d, ms in limits.items())
        if run.get("promote"):
            old["promote"] = ";".join(run["promote"]["rungs"])
            old["eta"] = int(run["promote"]["eta"])
        return cls.from_dict(old)


# ---------------------------------------------------------------------------- derived forms
def check_options(config: Any, error: type[Exception]) -> None:
    """Each field of a dataclass declared with `option` against its type, choices and rule;
    the first one broken raises `error` with one line naming the flag, the value and the rule."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _has_type(value, hints[f.name]):
            raise error(f"{flag_of(f)}: {value!r} must be {_type_name(hints[f.name])}")
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise error(f"{flag_of(f)}: {value!r} must be one of {', '.join(choices)}")
        check = f.metadata.get("check")
        why = check(value) if check else None
        if why:
            raise error(f"{flag_of(f)}: {value} {why}")


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a `SearchConfig` field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base(hint: Any) -> type:
    """`int` for `int | None`; the one non-None type of a field."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _has_type(value: Any, hint: Any) -> bool:
    base = _base(hint)
    if value is None:
        return type(None) in typing.get_args(hint)
    if base is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if base is float:
        return isinstance(value, (int, float))
    return isinstance(value, base)


def _type_name(hint: Any) -> str:
    base = _base(hint)
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    text = name.get(base, base.__name__)
    return text + (" or null" if type(None) in typing.get_args(hint) else "")


def search_parser(cls: type[SearchConfig] = SearchConfig, *,
                  only_given: bool = False) -> argparse.ArgumentParser:
    """The `search.py` parser, one argument per field of `cls` (a subclass adds its own).
    `only_given`: options not on the command line are absent from the namespace (what
    `--resume` takes over from the stored config)."""
    p = argparse.ArgumentParser(prog="search.py", description=_DESCRIPTION,
                                argument_default=argparse.SUPPRESS if only_given else None)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        m = f.metadata
        default = argparse.SUPPRESS if only_given else f.default
        if _base(hints[f.name]) is bool:
            group = p.add_mutually_exclusive_group() if m.get("negative") else p
            group.add_argument(flag_of(f), dest=f.name, action="store_true", default=default,
                               help=m["help"])
            if m.get("negative"):
                group.add_argument(m["negative"], dest=f.name, action="store_false",
                                   default=default, help=m["negative_help"])
            continue
        base = _base(hints[f.name])
        p.add_argument(flag_of(f), dest=f.name, type=None if base is str else base,
                       default=default, choices=m.get("choices"), metavar=m.get("metavar"),
                       help=m["help"])
    return p


def from_namespace(args: argparse.Namespace, cls: type[SearchConfig] = SearchConfig) -> SearchConfig:
    """The config of a parsed command line (`search_parser`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def options_markdown(cls: type[SearchConfig] = SearchConfig) -> str:
    """The option list of optimize/README.md: one line per field (flag, default, help)."""
    lines = []
    for f in dataclasses.fields(cls):
        flags = f"`{flag_of(f)}`" + (f" / `{f.metadata['negative']}`" if f.metadata.get("negative")
                                     else "")
        default = "" if f.default in (None, False) else f" (default `{f.default}`)"
        choices = f.metadata.get("choices")
        one_of = f" {{{'|'.join(choices)}}}" if choices else ""
        text = f.metadata["help"].replace("%%", "%")  # argparse's escape
        lines.append(f"- {flags}{one_of}{default}: {text}")
    return "\n".join(lines)

