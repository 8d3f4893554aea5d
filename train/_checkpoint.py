"""The run folder's files: the checkpoint (timm's layout), the per-epoch CSV, train.json.

The checkpoint follows timm's `train.py` (`timm.utils.CheckpointSaver`): the weights under
``state_dict`` (and ``state_dict_ema`` with an EMA, which `timm.models.load_checkpoint`
prefers unless ``use_ema=False``), ``optimizer``, ``epoch`` (the last finished, counted from
0) with ``version: 2``, so `timm.models.resume_checkpoint` reads it too. Everything in it is a
tensor, number, string, list or dict: it loads with ``torch.load(weights_only=True)``, as timm
loads it. It is written to a temporary file and renamed: a run killed while saving keeps the
previous epoch's checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from search_space import ArchConfig, ArchError

from .config import RESULT_FIELDS, TrainConfig, TrainError

__all__ = ["CHECKPOINT", "CSV", "save_checkpoint", "load_for_resume", "stored_config", "write_csv",
           "write_json"]

CHECKPOINT = "checkpoint.pth.tar"
CSV = "epochs.csv"
ARCH_FILE = "arch.yaml"
MODEL_NAME = "pconv_fasternet"


def save_checkpoint(out: Path, state: Mapping[str, Any]) -> Path:
    path = out / CHECKPOINT
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)
    return path


def load_for_resume(out: Path, arch: ArchConfig, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint in `out`, checked to continue `arch` under `config`: TrainError (one
    line) when there is none, it is unreadable, of another architecture or another setting."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise TrainError(f"--resume: {out} has no {CHECKPOINT} to continue (no epoch finished "
                         "there yet?); run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = ArchConfig.from_dict(state["arch_config"], source=str(path))
    except (OSError, RuntimeError, KeyError, TypeError, ArchError) as e:
        raise TrainError(f"--resume: {path} is not a checkpoint of search.py train "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if stored != arch:
        raise TrainError(f"--resume: {path} holds architecture {stored.arch_id}, this command "
                         f"trains {arch.arch_id}; give its architecture or another --out")
    mine = config.result_fields()
    for key in RESULT_FIELDS:
        if state["config"].get(key) != mine[key]:
            raise TrainError(f"--resume: the run in {out} was started with {key} "
                             f"{state['config'].get(key)!r}, this command gives {mine[key]!r}; "
                             "resume with its settings or choose another --out")
    return state


def stored_config(out: Path) -> dict[str, Any] | None:
    """The ``config`` record of the checkpoint in `out` (None without a readable one)."""
    try:
        return dict(torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)["config"])
    except (OSError, RuntimeError, KeyError, TypeError):
        return None


def write_csv(out: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """epoch, train_loss, test_acc (%), [test_acc_ema,] lr, seconds: one row per epoch."""
    path = out / CSV
    fields = ["epoch", "train_loss", "test_acc"] + (
        ["test_acc_ema"] if rows and rows[0].get("test_acc_ema") is not None else []) + [
        "lr", "seconds"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "test_acc": round(100 * row["test_acc"], 4),
                             **({"test_acc_ema": round(100 * row["test_acc_ema"], 4)}
                                if "test_acc_ema" in fields else {})})
    return path


def write_json(out: Path, record: Mapping[str, Any]) -> Path:
    path = out / "train.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
