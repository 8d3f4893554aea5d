"""`SearchConfig`: one declaration per search option, from which the parser, the validation,
run.json's `config` record, `--resume` and the README's option list are derived."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import optuna
import pytest

import search
from optimize.config import (
    SearchConfig,
    SearchConfigError,
    flag_of,
    from_namespace,
    option,
    options_markdown,
    search_parser,
)

ROOT = Path(__file__).resolve().parents[1]
FIELDS = dataclasses.fields(SearchConfig)
#: The flags search.py had before its parser was generated: none may disappear or change
#: (--workers changed on purpose: its default is now one per usable core, `cli._workers`;
#: --timeout too: it is now the whole run's wall-clock budget, 600 s, `optimize.budget`).
FLAGS = {"--device": "auto", "--trials": 40, "--timeout": 600.0, "--space": None,
         "--proxy": "auto", "--dataset": "fashion-mnist", "--budget": "quick",
         "--promote": None, "--eta": None, "--objective": "pareto", "--target-latency": None,
         "--max-latency": None, "--max-params": None, "--sampler": "tpe", "--backend": "optuna",
         "--workers": None, "--proxy-device": "auto", "--parallel": None, "--ray-address": None,
         "--gpus-per-trial": None, "--storage": None, "--study-name": "pconv-nas",
         "--heartbeat": 10, "--run-dir": None, "--resume": False, "--early-stopping": False,
         "--no-early-stopping": False, "--seed": 0, "--cache": True, "--no-cache": True,
         # added since (issue 23: a table is trusted only where it was measured)
         "--calibrate-latency": False, "--trust-table": False}
#: A value for every field other than its default (and valid together: --trust-table and
#: --calibrate-latency exclude each other, so the former keeps its default).
OTHER = {"device": "arm,gpu", "calibrate_latency": True, "trust_table": False, "trials": 7,
         "timeout": 60.0, "space": "my.yaml", "proxy": "synflow",
         "dataset": "cifar10", "budget": "smoke", "promote": "smoke,quick", "eta": 2,
         "objective": "pareto", "target_latency": 5.0, "max_latency": "arm=9", "max_params": 3.5,
         "sampler": "nsga2", "backend": "optuna", "workers": 2, "proxy_device": "cpu",
         "parallel": "processes", "ray_address": None, "gpus_per_trial": None,
         "storage": "journal:/tmp/study.log", "study_name": "other", "heartbeat": 5,
         "run_dir": "results/x", "resume": True, "early_stopping": True, "seed": 3,
         "cache": False}


def test_every_flag_and_default_of_the_old_parser_is_kept():
    parser = search_parser()
    flags = {s: a for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}
    assert set(flags) == set(FLAGS)
    args = parser.parse_args([])
    for flag, default in FLAGS.items():
        assert getattr(args, flags[flag].dest) == default, flag
    assert from_namespace(args) == SearchConfig()
    assert parser.parse_args(["--early-stopping"]).early_stopping is True
    assert parser.parse_args(["--no-early-stopping"]).early_stopping is False


def test_every_field_parses_and_round_trips_through_run_json():
    assert set(OTHER) == {f.name for f in FIELDS}
    argv: list[str] = []
    for f in FIELDS:
        value = OTHER[f.name]
        if isinstance(value, bool):
            argv += [flag_of(f) if value else f.metadata["negative"]] if value != f.default else []
        elif value is not None:
            argv += [flag_of(f), str(value)]
    config = from_namespace(search_parser().parse_args(argv))
    assert config == SearchConfig(**OTHER)
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_new_option_is_one_declaration():
    """What adding a search option takes: one field. The parser, the checks, run.json's
    record and the README's list follow from it."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithToy(SearchConfig):
        toy_steps: int = option(3, help="a toy option", check=lambda v: None if v >= 1 else
                                "must be >= 1")

    config = from_namespace(search_parser(WithToy).parse_args(["--toy-steps", "5"]), WithToy)
    assert config.toy_steps == 5 and config.trials == 40
    assert WithToy.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert "- `--toy-steps` (default `3`): a toy option" in options_markdown(WithToy)
    with pytest.raises(SearchConfigError, match=r"^--toy-steps: 0 must be >= 1$"):
        WithToy(toy_steps=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"trials": 0}, "--trials: 0 must be >= 1"),
    ({"timeout": -1.0}, "--timeout: -1.0 must be >= 0 seconds (0: no budget)"),
    ({"heartbeat": 0}, "--heartbeat: 0 must be >= 1 second"),
    ({"trials": "3"}, "--trials: '3' must be an integer"),
    ({"early_stopping": 1}, "--early-stopping: 1 must be true or false"),
    ({"sampler": "cma"}, "--sampler: 'cma' must be one of tpe, nsga2, random, gp"),
    ({"max_latency": "arm=1"}, "--max-latency: 'arm' is not one of the searched devices (auto)"),
    ({"eta": 2}, "--eta applies with --promote"),
    ({"promote": "quick,full", "eta": 1}, "--eta: 1 must be >= 2"),
    ({"device": " , "}, "--device: name at least one latency table"),
])
def test_bad_values_are_one_line_naming_option_value_and_rule(kwargs, message):
    with pytest.raises(SearchConfigError) as e:
        SearchConfig(**kwargs)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_keyword_only_frozen_and_strict_file_form():
    with pytest.raises(TypeError):
        SearchConfig("arm")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        SearchConfig().trials = 3  # type: ignore[misc]
    with pytest.raises(SearchConfigError, match="unknown option 'trails'; did you mean 'trials'"):
        SearchConfig.from_dict({"trails": 3})
    assert SearchConfig.from_dict({"trials": 3}) == SearchConfig(trials=3)  # older record
    stored = SearchConfig(storage="postgresql://nas:secret@db/x").to_dict()["storage"]
    assert "secret" not in stored


@pytest.mark.parametrize("run", sorted((ROOT / "results").glob("*/run.json")), ids=lambda p: p.parent.name)
def test_shipped_run_folders_load(run):
    """A shipped run.json written before the `config` record: the loader reads the settings
    it recorded (not its argv: the defaults of the day filled the rest, early stopping was on
    then); one written since: its `config`. Either way the recorded settings agree."""
    record = json.loads(run.read_text())
    loaded = SearchConfig.from_run(record)
    assert loaded.devices == record["devices"] and loaded.budget == record["fidelity"]
    assert (loaded.trials, loaded.seed, loaded.sampler, loaded.objective, loaded.early_stopping) == (
        record["trials"], record["seed"], record["sampler"], record["objective"],
        record["early_stopping"])
    assert loaded.max_latency_ms == record["max_latency_ms"]
    assert SearchConfig.from_dict(loaded.to_dict()) == loaded


def test_default_workers_follow_the_cores_on_the_cpu(monkeypatch):
    import types

    from optimize import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    cpu, cuda = types.SimpleNamespace(type="cpu"), types.SimpleNamespace(type="cuda")
    assert cli._workers(SearchConfig(), cpu) == 3  # one candidate per core, one thread each
    assert cli._workers(SearchConfig(trials=2), cpu) == 2  # never more than the trials
    assert cli._workers(SearchConfig(), cuda) == 1
    assert cli._workers(SearchConfig(workers=5), cpu) == 5  # asked for: as asked


def test_readme_option_list_is_generated():
    readme = (ROOT / "optimize" / "README.md").read_text()
    block = re.search(r"<!-- options: .*?-->\n(.*?)\n<!-- /options -->", readme, re.S)
    assert block, "optimize/README.md lost its generated option list"
    assert block.group(1) == options_markdown(), (
        "regenerate the list in optimize/README.md with "
        "`python -c 'from optimize.config import options_markdown; print(options_markdown())'`")


# ------------------------------------------------------------------------------- --resume
def _search(run_dir: Path, capsys, *extra: str) -> str:
    rc = search.main([*extra, "--run-dir", str(run_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def _run_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture
def fake_proxy(monkeypatch):
    from test_optimize import FakeProxy, wobbly_accuracy

    monkeypatch.setattr("proxies.make_proxy", lambda name, **kwargs: FakeProxy(wobbly_accuracy))


def test_resume_reloads_the_config_and_takes_what_is_given_again(tmp_path, capsys, fake_proxy):
    run_dir = tmp_path / "run"
    _search(run_dir, capsys, "--device", "amd-epyc", "--trials", "2", "--budget", "smoke",
            "--max-params", "40", "--seed", "3")
    first = _run_record(run_dir)
    assert first["config"] == {**SearchConfig().to_dict(), "device": "amd-epyc", "trials": 2,
                               "budget": "smoke", "max_params": 40.0, "seed": 3,
                               "run_dir": str(run_dir),
                               # auto resolved (no estimate is fitted for smoke): what ran
                               "proxy": "short_train",
                               # default: one per usable core, at most the trials
                               "workers": min(len(os.sched_getaffinity(0)), 2)}
    _search(run_dir, capsys, "--resume", "--trials", "3")
    again = _run_record(run_dir)
    assert again["config"] == {**first["config"], "trials": 3, "resume": True}
    assert again["budget"] == first["budget"] and again["max_params_m"] == 40.0
    assert again["seed"] == 3 and again["devices"] == ["amd-epyc"]


def test_resume_of_a_run_written_before_the_config_record(tmp_path, capsys, fake_proxy):
    run_dir = tmp_path / "run"
    _search(run_dir, capsys, "--device", "amd-epyc", "--trials", "2", "--budget", "smoke",
            "--seed", "3")
    study = optuna.load_study(study_name="pconv-nas", storage=f"sqlite:///{run_dir / 'study.db'}")
    old = {k: v for k, v in study.user_attrs["run"].items() if k != "config"}
    study.set_user_attr("run", old)
    _search(run_dir, capsys, "--resume", "--trials", "3")
    again = _run_record(run_dir)
    assert again["config"]["budget"] == "smoke" and again["config"]["seed"] == 3
    assert again["budget"] == old["budget"] and again["devices"] == ["amd-epyc"]
    assert search.main(["show", str(run_dir)]) == 0


def test_show_reads_a_shipped_run_folder(tmp_path, capsys):
    run_dir = Path(shutil.copytree(ROOT / "results" / "default-arm", tmp_path / "run"))
    assert search.main(["show", str(run_dir)]) == 0
    assert "Pareto front on arm" in capsys.readouterr().out
