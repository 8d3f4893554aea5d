"""Scale-out load and fault benchmark (issue 16): W worker processes, each the real
`search.py` command, on one study in one storage (a throwaway PostgreSQL server started
here, or a JournalFileBackend log), with some workers killed with kill -9 at random moments.

    python benchmarks/scale_out.py                       # W = 1,2,4,8 on PostgreSQL, smoke budget
    python benchmarks/scale_out.py --workers 2,4 --trials 16 --storage journal

Per W it reports, read back from the storage after the run:
- trials per minute: distinct architectures evaluated, from the first trial's start to the
  last one's end (the workers' start-up, torch and the dataset, is outside that window);
- lost: trials of a killed worker whose candidate was never evaluated afterwards (must be 0);
- evaluated twice: architectures trained by more than one trial; a repeated proposal reuses
  its twin's result (`duplicate_of`) and is not counted (must be 0);
- recovery: seconds from a kill to the start of the retry of the trial it cut off (the
  heartbeat's grace period, `--heartbeat` x 4, plus the wait for a surviving worker's next
  draw).

The report (`--out`, Markdown and JSON side by side) names the machine (`lscpu`): on a
machine with C cores, throughput can scale with W only up to C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_USER, PG_PASSWORD = "nas", "pconv-nas-test"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def _pg_bindir() -> Path:
    """The folder holding initdb and pg_ctl (Debian keeps them out of PATH)."""
    candidates = [Path(p).parent for p in (shutil.which("initdb"),) if p]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; "
                              "apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def temp_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 in a temporary folder, password auth; yields
    its URL and stops it (and deletes the folder) afterwards. PostgreSQL refuses to run as
    root: as root, the server runs as the `postgres` user Debian's package creates."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("the psycopg driver is not installed (pip install "
                                  "'psycopg[binary]==3.3.9')") from None
    bindir = _pg_bindir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no postgres user to run the "
                                      "server as") from None
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="pconv-pg-"))
    if as_user:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    (root / "pw").write_text(PG_PASSWORD + "\n")
    if as_user:
        os.chown(root / "pw", owner.pw_uid, owner.pw_gid)
    port = _free_port()
    data, log = root / "data", root / "server.log"
    started = False
    try:
        def run(*cmd: str) -> None:
            proc = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                raise PostgresUnavailable(f"{Path(cmd[0]).name} failed: {tail[0]}")

        run(str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={root / 'pw'}",
            "-A", "scram-sha-256", "--no-sync", "-E", "UTF8")
        # fsync off: a test server's data may be lost in a crash; 200 connections: up to 8
        # workers with SQLAlchemy pools of 5 + 10 each, and the readers.
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200", "start")
        started = True
        yield f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the benchmark
def machine() -> str:
    """The CPU model and core count (`lscpu`)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = info.get("Model name", "?").strip()
        return f"{model}, {info.get('CPU(s)', '?').strip()} CPU(s) ({platform.machine()})"
    except (OSError, subprocess.SubprocessError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s)"


def _count(study: object) -> dict:
    """The measures of one study (see the module docstring) from its trials."""
    from optuna.trial import TrialState

    from optimize.objective import DUPLICATE, LOST
    from optimize.runner import evaluated

    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if evaluated(t)]
    by_arch = Counter(t.user_attrs.get("arch_id") for t in counted)
    lost_trials = [t for t in trials if LOST in t.user_attrs and t.state == TrialState.FAIL]
    retries = {t.system_attrs.get("failed_trial"): t for t in trials if "failed_trial" in t.system_attrs}
    unrecovered = [t.number for t in lost_trials
                   if not (retries.get(t.number) is not None and retries[t.number].state.is_finished())]
    starts = [t.datetime_start for t in counted if t.datetime_start]
    ends = [t.datetime_complete for t in counted if t.datetime_complete]
    minutes = (max(ends) - min(starts)).total_seconds() / 60 if starts and ends else float("nan")
    trained = sorted(float(t.user_attrs["proxy_seconds"]) for t in counted
                     if DUPLICATE not in t.user_attrs and "proxy_seconds" in t.user_attrs)
    return {"trials": len(trials), "evaluated": len(counted),
            "repeats": sum(DUPLICATE in t.user_attrs for t in trials),
            "evaluated_twice": sum(n - 1 for n in by_arch.values() if n > 1),
            # seconds one training took: grows with W once the workers share cores
            "proxy_s_median": trained[len(trained) // 2] if trained else float("nan"),
            "lost_trials": [t.number for t in lost_trials], "unrecovered": unrecovered,
            "running_left": sum(t.state == TrialState.RUNNING for t in trials),
            "minutes": minutes, "per_minute": len(counted) / minutes if minutes else float("nan"),
            "retries": {n: (r.datetime_start.isoformat() if r.datetime_start else None)
                        for n, r in retries.items()}}


def run_one(url: str, study_name: str, workers: int, args: argparse.Namespace, rng: random.Random,
            tmp: Path) -> dict:
    """W workers of `search.py` on one study; `args.kills` of them killed at random moments
    (W >= 2: someone must survive to recover)."""
    import optuna

    from optimize.objective import LOST, WORKER
    from optimize.storage import StorageSpec

    argv = ["--device", args.device, "--budget", args.budget, "--trials", str(args.trials),
            "--storage", url, "--study-name", study_name, "--heartbeat", str(args.heartbeat),
            "--seed", str(args.seed), "--timeout", "3600", "--sampler", args.sampler]
    procs = []
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    for k in range(workers):
        log = open(tmp / f"{study_name}-{k}.log", "w")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen([sys.executable, str(ROOT / "search.py"), *argv,
                                        "--run-dir", str(tmp / f"{study_name}-{k}")],
                                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    kills: list[dict] = []
    n_kills = min(args.kills, workers - 1)
    # Kill points: after a random number of finished trials, each in the first 3/4 of the run.
    marks = sorted(rng.sample(range(1, max(2, args.trials * 3 // 4)), n_kills)) if n_kills else []
    storage = None
    while any(p.poll() is None for p, _ in procs):
        time.sleep(0.5)
        if not marks:
            continue
        if storage is None:
            with contextlib.suppress(Exception):  # the first worker may not have created it yet
                storage = StorageSpec(url).open()
                optuna.load_study(study_name=study_name, storage=storage)
            if storage is None:
                continue
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            continue
        trials = study.get_trials(deepcopy=False)
        if sum(t.state.is_finished() for t in trials) < marks[0]:
            continue
        # A victim in the middle of a trial: its candidate drawn, not yet told.
        running = {t.user_attrs.get(WORKER): t.number for t in trials
                   if t.state == optuna.trial.TrialState.RUNNING and "arch" in t.user_attrs}
        alive = [p for p, _ in procs if p.poll() is None
                 and f"{socket.gethostname()}:{p.pid}" in running]
        if not alive:
            continue
        victim = rng.choice(alive)
        os.kill(victim.pid, signal.SIGKILL)
        kills.append({"pid": victim.pid, "trial": running[f"{socket.gethostname()}:{victim.pid}"],
                      "at": dt.datetime.now().isoformat(), "after_s": time.monotonic() - t0})
        marks.pop(0)
    wall = time.monotonic() - t0
    for _, log in procs:
        log.close()
    codes = [p.returncode for p, _ in procs]
    study = optuna.load_study(study_name=study_name, storage=StorageSpec(url).open())
    out = _count(study)
    for kill in kills:  # recovery: the kill to the start of the retry of the trial it cut
        # The victim was picked while its trial ran; it may have finished it just before the
        # kill landed (the kill then cut nothing, between two trials).
        kill["cut"] = LOST in study.trials[kill["trial"]].user_attrs
        start = out["retries"].get(kill["trial"])
        kill["recovered_s"] = (None if start is None else
                               (dt.datetime.fromisoformat(start)
                                - dt.datetime.fromisoformat(kill["at"])).total_seconds())
    # The machine's 1-minute load average before the workers started and when they ended:
    # other jobs on a shared machine take cores from the workers.
    out.update(workers=workers, wall_s=wall, exit_codes=codes, kills=kills,
               load=(load_before, os.getloadavg()[0]))
    return out


def render(result: dict) -> str:
    """The Markdown report of a computed result."""
    a = result["args"]
    lines = [
        "# Scale-out: worker processes on one study",
        "",
        f"`python benchmarks/scale_out.py {' '.join(result['argv'])}` on {result['date']}.",
        "",
        f"- Machine: {result['machine']}. With {result['cores']} cores, trials per minute can "
        f"grow with W only up to W = {result['cores']}; beyond it the workers share the cores.",
        f"- Storage: {result['storage']}; Optuna {result['optuna']}, Python {result['python']}.",
        f"- Each worker is `search.py --device {a['device']} --budget {a['budget']} --trials "
        f"{a['trials']} --sampler {a['sampler']} --heartbeat {a['heartbeat']}` (a trial is lost "
        f"after {4 * a['heartbeat']} s without heartbeat); {a['kills']} worker(s) per run killed "
        "with kill -9 while training (W >= 2).",
        "",
        "| W | evaluated | trials/min | proposals/min | speed-up | s per training (median) | "
        "repeats | killed | lost | evaluated twice | recovery s | wall s | load before / after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = next((proposals(r) for r in result["runs"] if r["workers"] == 1), None)
    for r in result["runs"]:
        rec_s = ", ".join("between trials" if not k.get("cut", True) else "not recovered"
                          if k["recovered_s"] is None else f"{k['recovered_s']:.1f}"
                          for k in r["kills"]) or "-"
        speed = f"{proposals(r) / base:.2f}x" if base else "-"
        lines.append(f"| {r['workers']} | {r['evaluated']} | {r['per_minute']:.1f} | "
                     f"{proposals(r):.1f} | {speed} | "
                     f"{r.get('proxy_s_median', float('nan')):.2f} | "
                     f"{r['repeats']} | {len(r['kills'])} | {len(r['unrecovered'])} | "
                     f"{r['evaluated_twice']} | {rec_s} | {r['wall_s']:.0f} | "
                     + ("-" if "load" not in r else f"{r['load'][0]:.1f} / {r['load'][1]:.1f}")
                     + " |")
    lines += ["", *verdict(result), "",
              "Trials/min counts the architectures evaluated; proposals/min adds the repeated "
              "proposals (a sampler call and a storage round trip each, no training), which "
              "differ from run to run (one worker's TPE repeats itself more than several "
              "workers with their own seeds do), so the speed-up is taken on proposals. "
              "Evaluated can exceed --trials by up to W - 1: workers that start their last "
              "trials at the same moment each find the budget open (as with Optuna's "
              "MaxTrialsCallback); none of them is a repeat. "
              "Lost and evaluated-twice counts come from the storage after the run (see the "
              "module docstring of `benchmarks/scale_out.py`); the JSON beside this file holds "
              "every run's figures, kills and exit codes (a killed worker exits -9). The load "
              "column is the machine's 1-minute load average: above the core count, other jobs "
              "were taking cores from the workers, and trials per minute say less about scaling."]
    return "\n".join(lines) + "\n"


def proposals(run: dict) -> float:
    """Trials the workers handled per minute: evaluated ones and repeated proposals, over the
    window from the first evaluated trial's start to the last one's end."""
    return (run["evaluated"] + run["repeats"]) / run["minutes"]


def verdict(result: dict) -> list[str]:
    """The issue's goals against this run, in words computed from it."""
    runs = result["runs"]
    lost = sum(len(r["unrecovered"]) for r in runs)
    twice = sum(r["evaluated_twice"] for r in runs)
    cut = sum(bool(k.get("cut", True)) for r in runs for k in r["kills"])
    out = [f"- Faults: {cut} worker(s) killed mid-trial over {len(runs)} runs; trials lost: {lost}; "
           f"architectures evaluated twice: {twice} (goal: 0 and 0)."]
    base = next((r for r in runs if r["workers"] == 1), None)
    at_cores = next((r for r in runs if r["workers"] == result["cores"]), None)
    if base and at_cores and at_cores["kills"]:
        out.append(f"- Throughput at W = {result['cores']} (the core count) is not judged on this "
                   f"run: {len(at_cores['kills'])} of its worker(s) killed, so part of the run "
                   "had fewer workers; the throughput goal is judged on a run without kills "
                   "(`--kills 0`).")
    elif base and at_cores:
        speed = proposals(at_cores) / proposals(base)
        busy = at_cores.get("load", (float("nan"),))[0]
        out.append(f"- Throughput at W = {result['cores']} (the core count): {speed:.2f}x of W = 1 "
                   f"(proposals per minute; goal: within 20 % of linear, {0.8 * result['cores']:.1f}x); "
                   + ("met." if speed >= 0.8 * result["cores"] else
                      f"not met here, with the machine's load at {busy:.1f} before that run "
                      f"on {result['cores']} cores: other jobs held the cores a second worker "
                      "needed, so this run cannot tell whether the workers would scale."))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    p.add_argument("--trials", type=int, default=24, help="distinct architectures per study")
    p.add_argument("--kills", type=int, default=1, help="workers killed per run (W >= 2)")
    p.add_argument("--storage", choices=("postgresql", "journal"), default="postgresql")
    p.add_argument("--device", default="amd-epyc")
    p.add_argument("--budget", default="smoke")
    p.add_argument("--sampler", default="tpe")
    p.add_argument("--heartbeat", type=int, default=2, help="seconds (the search's default is 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "reports" / "scale_out.md"))
    p.add_argument("--render", action="store_true", help="only rewrite --out from its JSON")
    args = p.parse_args()
    out = Path(args.out)
    if args.render:
        out.write_text(render(json.loads(out.with_suffix(".json").read_text())))
        return 0
    import optuna

    rng = random.Random(args.seed)
    workers = [int(w) for w in args.workers.split(",")]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scale-out-")))
        if args.storage == "postgresql":
            url = stack.enter_context(temp_postgres())
            import psycopg

            with psycopg.connect(url) as con:
                server = con.execute("SELECT version()").fetchone()[0].split(" on ")[0]
            shown = f"{server} (local, fsync off)"
        else:
            url, shown = f"journal:{tmp / 'study.log'}", "JournalFileBackend (local file)"
        runs = []
        for w in workers:
            print(f"W={w} ...", flush=True)
            r = run_one(url, f"scale-w{w}", w, args, rng, tmp)
            print(f"  {r['evaluated']} evaluated, {r['per_minute']:.1f}/min, kills {r['kills']}, "
                  f"lost {r['unrecovered']}, evaluated twice {r['evaluated_twice']}", flush=True)
            runs.append(r)
    result = {"argv": sys.argv[1:], "date": dt.date.today().isoformat(), "machine": machine(),
              "cores": os.cpu_count(), "storage": shown, "optuna": optuna.__version__,
              "python": platform.python_version(), "args": vars(args) | {"out": None},
              "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
