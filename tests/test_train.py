"""`search.py train` and `train.train`: a quick run on Fashion-MNIST, the checkpoint in timm,
resume after an interrupted epoch (bit-exact on the CPU), the reference recipe's equivalence
with `ShortTrain`, the bad-input errors (exit 2, nothing overwritten), and torchrun on the CPU.

Runs go through `search.main` in-process (the CLI's code path without a new interpreter)
on a small network and 256-512 training images at 32x32; the held-out split is Fashion-MNIST's
test split, as `search.py train` uses it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.models import load_checkpoint, resume_checkpoint

import search
import train.loop as loop
from proxies import ShortTrain, load_dataset
from proxies.reference import Protocol
from search_space import ArchConfig
from train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = ArchConfig(widths=(8, 16, 16, 24), depths=(1, 1, 1, 1), n_divs=(2, 2, 2, 2),
                   mlp_ratios=(2, 2, 2, 2), kernel_sizes=(3, 3, 3, 3), feature_dim=32)
OTHER = SMALL.replace(widths=(8, 16, 24, 24))
QUICK = ["--limit-train", "512", "--epochs", "1", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture
def arch_file(tmp_path) -> Path:
    return SMALL.save(tmp_path / "small.yaml")


def run(*argv: str) -> int:
    return search.main(["train", *argv])


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def test_quick_run_writes_its_folder(arch_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(str(arch_file), *QUICK, "--out", str(out)) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "% on the fashion-mnist test split (10000 images)" in printed
    assert {p.name for p in out.iterdir()} == {"checkpoint.pth.tar", "epochs.csv", "arch.yaml",
                                                "train.json"}
    rows = list(csv.DictReader(open(out / "epochs.csv")))
    assert list(rows[0]) == ["epoch", "train_loss", "test_acc", "lr", "seconds"]
    assert len(rows) == 1 and 10.0 < float(rows[0]["test_acc"]) <= 100.0  # percent
    record = json.loads((out / "train.json").read_text())
    assert record["n_train"] == 512 and record["n_heldout"] == 10000
    assert record["accuracy"] == pytest.approx(float(rows[0]["test_acc"]) / 100, abs=1e-6)
    assert ArchConfig.from_file(out / "arch.yaml") == SMALL


def test_checkpoint_loads_in_timm(arch_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(str(arch_file), *QUICK, "--model-ema", "--out", str(out)) == 0
    capsys.readouterr()
    ckpt = out / "checkpoint.pth.tar"
    state = torch.load(ckpt, weights_only=True)  # timm loads with weights_only=True
    kwargs = dict(arch=str(out / "arch.yaml"), num_classes=10, in_chans=1)
    model = timm.create_model("pconv_fasternet", checkpoint_path=str(ckpt), **kwargs)
    for key, value in model.state_dict().items():  # timm's loader prefers the EMA weights
        assert torch.equal(value, state["state_dict_ema"][key]), key
    plain = timm.create_model("pconv_fasternet", **kwargs)
    load_checkpoint(plain, str(ckpt), use_ema=False)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, state["state_dict"][key]), key
    # The weights give the accuracy the run reported.
    data = load_dataset("fashion-mnist", heldout="test")
    with torch.no_grad():
        logits = plain.eval()(data.batch(data.val_x[:2000], 32))
    top1 = float((logits.argmax(1) == data.val_y[:2000]).float().mean())
    assert top1 == pytest.approx(json.loads((out / "train.json").read_text())["accuracy"], abs=0.05)
    # timm's own resume reads the epoch: the next one to train.
    assert resume_checkpoint(timm.create_model("pconv_fasternet", **kwargs), str(ckpt),
                             log_info=False) == 1


def test_resume_after_an_interrupted_epoch_repeats_the_run(arch_file, tmp_path, capsys,
                                                           monkeypatch):
    """Two epochs straight vs. interrupted in the middle of the second and resumed: the same
    weights, EMA and rows (with Mixup/CutMix, EMA, augmentation: every random stream)."""
    argv = [str(arch_file), "--limit-train", "256", "--epochs", "2", "--batch-size", "32",
            "--device", "cpu", "--model-ema", "--mixup", "0.2", "--cutmix", "1.0",
            "--bn-recalibrate", "64"]
    assert run(*argv, "--out", str(tmp_path / "straight")) == 0
    step = loop._Run._step
    calls = []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 8 + 3:  # 8 updates per epoch: the third of epoch 2
            raise KeyboardInterrupt
        step(self)

    monkeypatch.setattr(loop._Run, "_step", interrupted)
    cut = tmp_path / "cut"
    assert run(*argv, "--out", str(cut)) == 130
    assert "continue with --resume" in capsys.readouterr().err
    assert torch.load(cut / "checkpoint.pth.tar", weights_only=True)["epoch"] == 0
    assert len(list(csv.DictReader(open(cut / "epochs.csv")))) == 1
    monkeypatch.setattr(loop._Run, "_step", step)
    # Resumed with the folder only: every option comes back from the checkpoint.
    assert run(str(arch_file), "--out", str(cut), "--resume", "--device", "cpu") == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(cut / "checkpoint.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["updates"] == b["updates"] == 16
    for key in ("state_dict", "state_dict_ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]


def test_the_reference_recipe_is_short_train_bit_for_bit():
    """`TrainConfig.from_protocol` trains as the ground truth's `ShortTrain` does: the same
    accuracy and mean training loss after every epoch (CPU, one thread)."""
    data = load_dataset("fashion-mnist", heldout="test")
    small = dataclasses.replace(data, train_x=data.train_x[:384], train_y=data.train_y[:384],
                                val_x=data.val_x[:500], val_y=data.val_y[:500])
    protocol = Protocol(epochs=2, batch_size=64, lr=2e-3)
    epochs = []
    proxy = ShortTrain(dataset=small, budget=protocol.budget(384, 500), seed=3, device="cpu")
    result = proxy(SMALL, callback=lambda step, acc: epochs.append(acc) and False)
    mine = train(SMALL, TrainConfig.from_protocol(protocol, seed=3, device="cpu"), dataset=small,
                 threads=1)
    assert [r.test_acc for r in mine.history] == [acc for _, acc in result.checkpoints]
    assert [r.train_loss for r in mine.history] == [loss for _, loss in result.train_losses]


@pytest.mark.parametrize("case", ["bad-yaml", "unknown-key", "other-arch", "no-dataset",
                                  "cuda", "taken", "pick-on-a-file", "resume-nothing",
                                  "bad-option", "odd-mixup"])
def test_bad_input_exits_2_and_writes_nothing(case, arch_file, tmp_path, capsys):
    out = tmp_path / "out"
    if case in ("other-arch", "taken"):
        assert run(str(arch_file), *QUICK, "--limit-train", "256", "--out", str(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}
    capsys.readouterr()
    if case == "bad-yaml":
        bad = tmp_path / "bad.yaml"
        bad.write_text("widths: [8, 16\ndepths: (1,\n")
        argv, needles = [str(bad)], ["bad.yaml"]
    elif case == "unknown-key":
        bad = tmp_path / "typo.yaml"
        bad.write_text(arch_file.read_text().replace("depths", "depth"))
        argv, needles = [str(bad)], ["depth"]
    elif case == "other-arch":
        argv, needles = [str(OTHER.save(tmp_path / "other.yaml")), "--resume"], [
            SMALL.arch_id, OTHER.arch_id]
    elif case == "no-dataset":
        argv, needles = [str(arch_file), "--dataset", f"imagefolder:{tmp_path}/none"], [
            "--dataset", "not a folder"]
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        argv, needles = [str(arch_file), "--device", "cuda"], ["--device", "CUDA is not available"]
    elif case == "taken":
        argv, needles = [str(arch_file)], ["already holds", "--resume"]
    elif case == "pick-on-a-file":
        argv, needles = [str(arch_file), "--pick", "knee"], ["--pick", "not a folder"]
    elif case == "resume-nothing":
        argv, needles = [str(arch_file), "--resume"], ["--resume", "no checkpoint.pth.tar"]
    elif case == "odd-mixup":
        argv, needles = [str(arch_file), "--mixup", "0.2", "--batch-size", "33"], [
            "--batch-size 33", "even"]
    else:
        argv, needles = [str(arch_file), "--lr", "0"], ["--lr", "must be > 0"]
    assert run(*argv, *QUICK[:4], "--out", str(out)) == 2
    one_line_error(capsys, *needles)
    after = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}
    assert after == before


@pytest.mark.slow
def test_torchrun_two_processes_on_the_cpu(arch_file, tmp_path):
    """DDP with gloo: two processes train one run; rank 0 writes it."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "search.py", "train", str(arch_file), *QUICK, "--batch-size", "32", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1
    record = json.loads((out / "train.json").read_text())
    assert record["world_size"] == 2 and record["n_train"] == 512
