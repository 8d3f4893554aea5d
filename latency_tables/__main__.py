"""CLI: `python -m latency_tables build|calibrate|validate|verify|predict|operators|show`.

Bad input gives a one-line error on stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from search_space import ArchError, SearchSpace, resolve_arch
from search_space.forms import FORMS, deploy_form

from ._derive_cli import cmd_calibrate_derived, is_derived_device
from ._device import default_device_name, last_level_cache_bytes
from .budget import budget_note
from .deploy import choose_form, form_networks
from .devices import DEVICES, derivable_devices
from .here import build_here
from .measure import Protocol
from .operators import compare_operators, time_operators
from .runtimes import RUNTIMES, get_runtime
from .table import SHIPPED_DIR, LatencyTable, MissingLayerError, TableNotFoundError
from .trust import PROBE_ROUNDS, cached_verification, verify
from .validate import (
    calibrate,
    correction_note,
    plot_validation,
    split_by_measured_share,
    validate,
)

REPORTS = Path(__file__).with_name("reports")


def _protocol(args: argparse.Namespace) -> Protocol:
    runtime = getattr(args, "runtime", "eager")
    get_runtime(runtime).require()
    if runtime != "eager":  # runtimes other than eager run here on the CPU
        if args.target == "cuda":
            raise ValueError(f"--runtime {runtime}: times on the CPU only (--target cpu)")
        args.target = "cpu"
    target = args.target or ("cuda" if torch.cuda.is_available() else "cpu")
    if target == "cuda" and not torch.cuda.is_available():
        raise ValueError("--target cuda: no CUDA device visible to torch")
    batch = args.batch or (32 if target == "cuda" else 1)  # the paper's GPU throughput protocol
    for name in ("batch", "threads", "sweeps", "repeats"):
        value = getattr(args, name, None) or 1
        if value < 1:
            raise ValueError(f"--{name}: {value} must be >= 1")
    context = last_level_cache_bytes() if target == "cpu" else 0
    kw = dict(target=target, batch=batch, threads=args.threads, context_bytes=context, runtime=runtime)
    if args.repeats:
        kw.update(min_repeats=args.repeats, max_repeats=max(args.repeats, 4 * args.repeats),
                  min_time_s=args.min_time)
    return Protocol(**kw)


def _bar(desc: str, unit: str = "layer"):
    bar = tqdm(total=1, desc=desc, unit=unit, dynamic_ncols=True)

    def update(done: int, total: int, *_: object) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _build_form(args: argparse.Namespace, proto: Protocol, name: str,
                space: SearchSpace) -> tuple[Protocol, dict | None]:
    """The protocol with its deployment form: `--form NAME`, the form of an interrupted build
    of the same table, or (auto) the one `deploy.choose_form` measures fastest here."""
    form = args.form or ("fused" if proto.runtime == "eager" else "auto")
    if form != "auto":
        deploy_form(form)
        return dataclasses.replace(proto, form=form), None
    partial = Path(args.out) / f"{name}.partial.json"
    if partial.exists():  # resume: keep the form the interrupted build measured in
        old = json.loads(partial.read_text())
        stored = old.get("protocol", {})
        if stored.get("runtime", "eager") == proto.runtime and old.get("form_choice"):
            print(f"form {stored['form']}: the form of the interrupted build in {partial}")
            return dataclasses.replace(proto, form=stored["form"]), old["form_choice"]
    nets = form_networks(space)
    print(f"choosing the deployment form for {proto.runtime}: every form on "
          f"{', '.join(n for n, _ in nets)} ...", flush=True)
    choice = choose_form(proto.runtime, proto, resolution=args.resolution, networks=nets,
                         progress=lambda line: print(f"  {line}", flush=True))
    print(choice.summary())
    return dataclasses.replace(proto, form=choice.chosen), choice.to_dict()


def cmd_build(args: argparse.Namespace) -> None:
    proto = _protocol(args)
    space = SearchSpace.from_file(args.space) if args.space else SearchSpace.default()
    name = args.device or default_device_name(proto.target) + (
        "" if proto.runtime == "eager" else f"-{proto.runtime}")
    if args.budget_minutes < 0:
        raise ValueError(f"--budget-minutes: {args.budget_minutes} must be >= 0 (0: every layer)")
    t0 = time.monotonic()
    proto, choice = _build_form(args, proto, name, space)
    budget = args.budget_minutes
    if budget:  # the form's choice (a minute or two for ExecuTorch's exports) is in the budget
        budget -= (time.monotonic() - t0) / 60
        if budget <= 0:
            raise ValueError(f"--budget-minutes: choosing the form took "
                             f"{(time.monotonic() - t0) / 60:.1f} min of the {args.budget_minutes:g}-min "
                             "budget; give a larger budget, or --form NAME")
    bars: dict[str, Any] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase not in bars:
            for bar, _ in bars.values():
                bar.close()
            bars[phase] = _bar(f"build {name}" if phase == "layers" else phase,
                               "layer" if phase == "layers" else "net")
        bars[phase][1](done, total)

    build_here(name, space, proto=proto, out_dir=args.out, resolution=args.resolution,
               budget_minutes=budget, sweeps=args.sweeps, calibrate_n=args.calibrate,
               calib_seed=args.calib_seed, sample_seed=args.sample_seed,
               form_choice=choice, progress=progress, say=lambda line: _close_then_print(bars, line))


def _close_then_print(bars: dict[str, Any], line: str) -> None:
    for bar, _ in bars.values():
        bar.close()
    print(line, flush=True)


def _calibrate(table: LatencyTable, n: int, seed: int, space: SearchSpace | None) -> None:
    """Fit and store a measured table's correction, with a progress bar; print it."""
    bar, update = _bar("calibrate", "net")
    corr = calibrate(table, n=n, seed=seed, space=space, progress=update)
    bar.close()
    print(correction_note(corr))


def cmd_calibrate(args: argparse.Namespace) -> None:
    if is_derived_device(args.device):  # a device with published figures: fit on them
        return cmd_calibrate_derived(args)
    if args.runtime:
        LatencyTable.load(args.device).check_runtime(args.runtime)
    if args.resolution is not None:
        raise ValueError(f"--resolution: {args.device!r} is a measured table; it keeps the resolution "
                         "it was measured at (measure another with `build --resolution`)")
    space = SearchSpace.from_file(args.space) if args.space else None
    _calibrate(LatencyTable.load(args.device), args.n, args.seed, space)


def cmd_validate(args: argparse.Namespace) -> None:
    table = LatencyTable.load(args.device)
    if args.runtime:
        table.check_runtime(args.runtime)
    space = SearchSpace.from_file(args.space) if args.space else None
    bar, update = _bar("validate", "net")
    v = validate(table, n=args.n, seed=args.seed, rounds=args.rounds, calib_n=args.calib_n,
                 space=space, progress=update)
    bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{table.name}_validate_n{args.n}_seed{args.seed}"
    v.rows.to_csv(out / f"{stem}.csv", index=False, float_format="%.4f")
    png = plot_validation(v, out / f"{stem}.png")
    print(table.describe())
    print(f"raw sum of layers   : {v.raw}")
    print(f"stored correction   : {v.corrected}")
    if table.predicted_keys:
        note = budget_note(table.meta)
        for label, acc in split_by_measured_share(v).items():
            print(f"  {label:17s}: {acc if acc else 'fewer than 2 networks'}  ({note})")
    sc, so = v.session_correction
    print(f"session correction  : {v.session}  (ms = {sc:.3f} x sum + {so:.2f}, fitted on "
          f"{args.calib_n} calibration networks measured in the same rounds)")
    print(f"wrote {out / (stem + '.csv')} and {png}")


def cmd_verify(args: argparse.Namespace) -> int:
    table = LatencyTable.load(args.name)
    v = verify(table, again=args.again, on_timing=lambda archs: print(
        f"timing {len(archs)} probe networks here with the table's protocol ({PROBE_ROUNDS} rounds)...",
        flush=True))
    print(table.describe())
    built = any(p.built_ms for p in v.probes)
    print(f"  {'probe':14s} {'predicted ms':>12s} {'here ms':>9s} {'ratio':>7s}"
          + (f" {'at build ms':>11s}" if built else ""))
    for p in v.probes:
        print(f"  {p.arch_id:14s} {p.predicted_ms:12.2f} {p.measured_ms:9.2f} {p.ratio:6.2f}x"
              + (f" {p.built_ms or float('nan'):11.2f}" if built else ""))
    print("this machine: " + ("; ".join(v.differences) if v.differences else
                              "the table's fingerprint (CPU, ISA, caches, versions as recorded)"))
    print(v.summary() + (" [cached; --again re-times]" if v.cached else ""))
    return 0 if v.verified else 1


def _trust_phrase(table: LatencyTable) -> str:
    """Verified here, not holding here, or not verified (from the cache: no timing)."""
    if table.source != "measured":
        return "not measured: see `show`"
    v = cached_verification(table)
    if v is None:
        return f"not verified here (`python -m latency_tables verify {table.name}`)"
    return v.summary() if v.verified else f"does NOT hold here: {v.summary()}"


def cmd_predict(args: argparse.Namespace) -> None:
    table = LatencyTable.load(args.table)
    runtime = table.meta.get("runtime", "eager")
    if args.runtime and args.runtime != runtime:
        raise ValueError(f"--runtime {args.runtime}: table {table.name!r} was measured in {runtime}; "
                         "pick a table of that runtime (`python -m latency_tables show --device NAME`)")
    arch = resolve_arch(args.arch)
    ms = table.predict(arch)
    dev = table.meta.get("device") or {}
    hw = dev.get("gpu_name") or dev.get("cpu_model") or "an unknown device"
    threads = table.meta.get("threads")
    how = (f"{runtime}, {threads} thread{'s' * (threads != 1)}, " if threads else f"{runtime}, ")
    how += f"batch {table.batch}"
    if table.source == "derived":
        what = f"derived for {hw} ({how}) from published measurements by a cost model, not measured"
    else:
        what = f"{table.source} on {hw}, {how}; {_trust_phrase(table)}"
    rate = f", {1000 / ms:.0f} images/s" if table.throughput else ""
    print(f"{ms:.1f} ms per image{rate} on {table.name} ({what})")


def cmd_operators(args: argparse.Namespace) -> None:
    proto = _protocol(args)
    df = compare_operators(time_operators(proto), proto.target)
    print(f"# {default_device_name(proto.target)}: batch {proto.batch}, {proto.threads} thread(s), "
          f"{proto.resolved_clock} clock, 10 stacked 3x3 layers; gflops = G multiply-adds/s")
    print(df.round(2).to_string(index=False))


def cmd_show(args: argparse.Namespace) -> None:
    print(LatencyTable.load(args.device).describe())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latency_tables", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def proto_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--target", choices=("cpu", "cuda"), help="default: cuda if available")
        sp.add_argument("--batch", type=int, help="default 1 on CPU, 32 on CUDA")
        sp.add_argument("--threads", type=int, default=1)
        sp.add_argument("--repeats", type=int, help="min timed passes per layer (default 10)")
        sp.add_argument("--min-time", type=float, default=0.0, help="min seconds per layer with --repeats")

    b = sub.add_parser("build", help="measure a latency table on this machine")
    b.add_argument("--device", help="table name (default: this CPU/GPU model, slugified)")
    b.add_argument("--space", help="search space YAML (default: search_space/default.yaml)")
    b.add_argument("--resolution", type=int, default=224)
    b.add_argument("--sweeps", type=int, default=2, help="passes over the layer list")
    b.add_argument("--out", default=str(SHIPPED_DIR), help="output folder")
    b.add_argument("--calibrate", type=int, default=10, help="calibration networks (0: none)")
    b.add_argument("--calib-seed", type=int, default=1000)
    b.add_argument("--budget-minutes", type=float, default=0,
                   help="measure a space-filling sample of the layers within M minutes (calibration "
                        "networks included) and predict the rest; a budget that measures every "
                        "layer spends what is left on the noisiest ones again; again: measures "
                        "more and refits (default 0: measure every layer, --sweeps times)")
    b.add_argument("--sample-seed", type=int, default=0, help="seed of the budgeted sample's ties")
    b.add_argument("--runtime", default="eager", help=f"{'|'.join(RUNTIMES)}: where layers run "
                   "(threads pinned to --threads; default eager); the table records it")
    b.add_argument("--form", help=f"auto|{'|'.join(FORMS)}: the deployment form layers are built "
                   "in; auto times each on 3 networks and takes the fastest that matches "
                   "(default: fused for eager, auto otherwise)")
    proto_args(b)
    b.set_defaults(func=cmd_build)

    derivable = "|".join(derivable_devices())  # arm|cpu|gpu
    aliases = ", ".join(DEVICES[n].aliases[0] for n in derivable_devices() if DEVICES[n].aliases)
    c = sub.add_parser("calibrate", help="fit a table's correction on calibration networks")
    c.add_argument("--device", required=True,
                   help=f"a measured table, or {derivable} (aliases {aliases}): "
                        "fit the cost model on the paper's published figures and derive the table")
    c.add_argument("--n", type=int, default=10)
    c.add_argument("--seed", type=int, default=1000)
    c.add_argument("--space", help=f"{derivable}: derive the table for every layer of this search "
                                   "space YAML (default: search_space/default.yaml); a measured "
                                   "table: draw its calibration networks from it")
    c.add_argument("--resolution", type=int,
                   help=f"{derivable}: derive the table at this image size (default 224)")
    c.add_argument("--runtime", help="the runtime the table must have been measured in")
    c.set_defaults(func=cmd_calibrate)

    v = sub.add_parser("validate", help="compare predictions with whole-network measurements")
    v.add_argument("--device", required=True)
    v.add_argument("--n", type=int, default=50)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--rounds", type=int, default=2)
    v.add_argument("--calib-n", type=int, default=10, help="calibration networks measured alongside")
    v.add_argument("--space")
    v.add_argument("--out", default=str(REPORTS))
    v.add_argument("--runtime", help="the runtime the table must have been measured in (networks "
                   "are timed in the table's runtime and form)")
    v.set_defaults(func=cmd_validate)

    ve = sub.add_parser("verify", help="time the probe networks here: does a measured table hold "
                                       "on this machine?")
    ve.add_argument("name", nargs="?", default="auto", help="table name (default: auto)")
    ve.add_argument("--again", action="store_true", help="re-time (default: the cached result)")
    ve.set_defaults(func=cmd_verify)

    pr = sub.add_parser("predict", help="the predicted latency of one architecture")
    pr.add_argument("arch", help="architecture YAML/JSON file or preset name")
    pr.add_argument("--table", default="auto", help="table name (default: auto)")
    pr.add_argument("--runtime", choices=tuple(RUNTIMES),
                    help="refuse a table measured in another runtime")
    pr.set_defaults(func=cmd_predict)

    o = sub.add_parser("operators", help="the paper's operator table on this device")
    proto_args(o)
    o.set_defaults(func=cmd_operators)

    s = sub.add_parser("show", help="describe a table")
    s.add_argument("--device", required=True)
    s.set_defaults(func=cmd_show)

    args = p.parse_args(argv)
    try:
        rc = args.func(args)
    except (ArchError, TableNotFoundError, MissingLayerError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
