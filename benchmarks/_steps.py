"""Resumable benchmark steps of one machine: `reports/<name>/steps.json`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from latency_tables._device import describe_device

#: What makes two runs the same machine for a report (a report is of one machine).
SAME_MACHINE = ("cpu_model", "caches_bytes", "torch")


def open_steps(path: Path, resume: bool = True, **settings: Any) -> dict[str, Any]:
    """The steps stored at `path` (empty if none), with this machine's description and the
    date and `settings` set where new. With `resume`, steps of another machine are refused
    (SystemExit naming the way on): their figures cannot be compared with this one's."""
    steps = json.loads(path.read_text()) if path.exists() else {}
    here = describe_device("cpu")
    there = steps.get("device")
    if resume and there and any(there.get(k) != here.get(k) for k in SAME_MACHINE):
        raise SystemExit(f"{path} holds steps measured on another machine ({there.get('cpu_model')}, "
                         f"caches {there.get('caches_bytes')}, torch {there.get('torch')}); a report "
                         "is of one machine: pass another --out, or delete it to start again")
    for key, value in {"device": here, "date": time.strftime("%Y-%m-%d"), **settings}.items():
        steps.setdefault(key, value)
    return steps
