"""Runtimes a latency table can be measured in: eager PyTorch, ONNX Runtime, ExecuTorch.

A network deployed with ExecuTorch's XNNPACK delegate runs 2x faster than eager PyTorch on
this machine, and ONNX Runtime 0.75-0.91x with another order of the networks (issue 23), so
a table holds the latency of one runtime. Each `Runtime` here declares:

- whether it is installed, and its version (`require` fails with one line naming the pip
  command, `RuntimeNotInstalled`);
- `compile(module, inputs, threads)`: the module exported and loaded in the runtime (`load`
  reads the same from a file), its threads pinned to `threads`, as a `Compiled` program (a
  callable on torch tensors, the file bytes `search.py export` writes, the ops that fall
  outside the runtime's delegate and the export time in seconds). ExecuTorch: `torch.export`
  -> `to_edge_transform_and_lower` with the `XnnpackPartitioner` -> `to_executorch` ->
  `executorch.runtime` (the documented XNNPACK flow); ONNX Runtime: `torch.onnx.export`
  (TorchScript exporter, opset 17) -> an `InferenceSession` on the CPU provider with intra-
  and inter-op threads set;
- with `strict=True`, `compile` raises `NotFullyLowered` naming the ops that stay outside
  the delegate (ExecuTorch: every `call_function` node of the lowered graph that is not a
  delegate call; they run on ExecuTorch's portable kernels, 10x slower than XNNPACK here).

The timing protocol (`measure.py`) is the same for every runtime: a layer is compiled once as
a chain (or rotation) of distinct copies and timed with the same warm-up, repeats and clock.
With one thread every runtime here runs on the calling thread, so the thread CPU clock holds.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import importlib.util
import io
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["RUNTIMES", "Compiled", "NotFullyLowered", "Runtime", "RuntimeMismatch",
           "RuntimeNotInstalled", "UnknownRuntime", "get_runtime"]


class UnknownRuntime(ValueError):
    """A runtime name that is not in `RUNTIMES`."""


class RuntimeNotInstalled(ValueError):
    """The runtime's package is not importable; the message names the pip command."""


class NotFullyLowered(ValueError):
    """An export whose graph keeps ops outside the runtime's delegate (named in the message)."""

    def __init__(self, message: str, outside: Sequence[str]) -> None:
        super().__init__(message)
        self.outside = tuple(outside)


class RuntimeMismatch(ValueError):
    """A table measured in another runtime than the one asked for."""


@dataclasses.dataclass
class Compiled:
    """A module loaded in a runtime.

    `prepare(*tensors)` turns inputs into the runtime's own form once (outside any timing);
    `run(prepared)` is one forward pass; calling the object runs torch tensors and returns the
    first output as a torch tensor. `artifact` is the file `search.py export` writes (None for
    eager), `outside` the ops left outside the delegate ("aten.split_with_sizes_copy x13"),
    `export_s` the seconds export and lowering took.
    """

    prepare: Callable[..., Any]
    run: Callable[[Any], Any]
    to_tensor: Callable[[Any], torch.Tensor]
    artifact: bytes | None = None
    outside: tuple[str, ...] = ()
    export_s: float = 0.0
    keep: Any = None  # what the runtime's objects read in place (ExecuTorch: buffer, program)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.to_tensor(self.run(self.prepare(*tensors)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Runtime:
    """One runtime: its name, the package that provides it and how to export and load for it.

    Args:
        name: what tables record (`runtime`) and `--runtime` accepts.
        package: the importable module whose presence makes the runtime available.
        distribution: the pip distribution whose version tables record.
        pin: the requirement `requirements.txt` pins (named in `RuntimeNotInstalled`).
        label: how printed latencies name it ("executorch {version} XNNPACK").
        suffix: the file `search.py export --runtime` writes (None: nothing to write).
        default_form: the deployment form used where no measurement chose one.
        exporter: `(module, inputs) -> (file bytes or None, ops outside the delegate)`.
        loader: `(file bytes or None, module, threads) -> Compiled`.
        row_export_s: the least seconds one table row spends exporting (budget floors).
    """

    name: str
    package: str
    distribution: str
    pin: str
    label: str
    suffix: str | None
    default_form: str
    exporter: Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[bytes | None, tuple[str, ...]]]
    loader: Callable[[bytes | None, nn.Module | None, int], Compiled]
    row_export_s: float = 0.0

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def version(self) -> str:
        """The installed version ("1.5.1"); raises `RuntimeNotInstalled`."""
        self.require()
        if self.name == "eager":
            return torch.__version__
        return importlib.metadata.version(self.distribution)

    def describe(self) -> str:
        """"executorch 1.5.1 XNNPACK" (the installed version)."""
        return self.label.format(version=self.version())

    def require(self) -> None:
        if not self.available():
            raise RuntimeNotInstalled(
                f"--runtime {self.name}: {self.distribution} is not installed; "
                f"`pip install {self.pin}` (or `make setup`)")

    def compile(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int = 1, *,
                strict: bool = True, what: str = "the module") -> Compiled:
        """`module` (eval) exported and loaded in this runtime, its threads pinned to `threads`.

        With `strict`, raises `NotFullyLowered` where ops stay outside the delegate, naming
        them and what was exported (`what`)."""
        self.require()
        if threads < 1:
            raise ValueError(f"threads: {threads} must be >= 1")
        module = module.eval()
        t0 = time.perf_counter()
        artifact, outside = self.exporter(module, tuple(inputs))
        if strict and outside:
            raise NotFullyLowered(
                f"{self.name}: {what} cannot be lowered fully; outside the delegate: "
                f"{', '.join(outside)} (try another --form)", outside)
        compiled = self.loader(artifact, module, threads)
        return dataclasses.replace(compiled, artifact=artifact, outside=outside,
                                   export_s=time.perf_counter() - t0)

    def load(self, path: str | Path, threads: int = 1) -> Compiled:
        """A file written by `search.py export --runtime` (`suffix`), loaded in this runtime."""
        self.require()
        if self.suffix is None:
            raise ValueError(f"--runtime {self.name}: has no file form to load")
        return self.loader(Path(path).read_bytes(), None, threads)


# ---------------------------------------------------------------------------- eager
def _eager_export(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[None, tuple[str, ...]]:
    return None, ()


def _eager_load(artifact: bytes | None, module: nn.Module | None, threads: int) -> Compiled:
    if module is None:
        raise ValueError("eager: needs the module itself")
    torch.set_num_threads(threads)

    def run(xs: tuple[torch.Tensor, ...]) -> Any:
        with torch.inference_mode():
            return module(*xs)

    return Compiled(prepare=lambda *xs: xs, run=run, to_tensor=_first)


def _first(out: Any) -> torch.Tensor:
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out if isinstance(out, torch.Tensor) else torch.from_numpy(out)


# ---------------------------------------------------------------------------- ONNX Runtime
def _onnx_export(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[bytes, tuple[str, ...]]:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on in-place ops
        torch.onnx.export(module, inputs, buf, input_names=[f"input{i}" for i in range(len(inputs))],
                          output_names=["output"] if len(inputs) == 1 else None,
                          opset_version=17, dynamo=False)
    return buf.getvalue(), ()  # every ONNX op runs on the CPU provider: nothing falls outside


def _onnx_load(artifact: bytes | None, module: nn.Module | None, threads: int) -> Compiled:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1  # the graphs are chains: nothing to run in parallel between ops
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(artifact, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return Compiled(prepare=lambda *xs: {n: x.numpy() for n, x in zip(names, xs)},
                    run=lambda feed: sess.run(None, feed), to_tensor=_first)


# ---------------------------------------------------------------------------- ExecuTorch
#: call_function nodes of a lowered graph that are plumbing, not computation left outside.
_ET_PLUMBING = ("getitem", "executorch_call_delegate")


def outside_delegate(graph_module: torch.fx.GraphModule) -> tuple[str, ...]:
    """The ops of a lowered ExecuTorch graph outside any delegate, as "name xN" by count."""
    names = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(getattr(node.target, "__name__", node.target))
        if any(p in name for p in _ET_PLUMBING):
            continue
        names.append(name.removesuffix(".default"))
    return tuple(f"{n} x{c}" for n, c in collections.Counter(names).most_common())


def _et_export(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[bytes, tuple[str, ...]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        exported = torch.export.export(module, inputs)
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    outside = outside_delegate(edge.exported_program().graph_module)
    return bytes(edge.to_executorch().buffer), outside


def _et_load(artifact: bytes | None, module: nn.Module | None, threads: int) -> Compiled:
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime as EtRuntime

    # XNNPACK runs on ExecuTorch's CPU thread pool (default: one thread per core); with one
    # thread the work runs on the calling thread, which the thread CPU clock measures.
    portable_lib._unsafe_reset_threadpool(threads)
    program = EtRuntime.get().load_program(artifact)
    method = program.load_method("forward")
    # The program reads the buffer in place: the bytes and the program must live as long as the
    # method (a freed buffer crashes the next execute).
    return Compiled(prepare=lambda *xs: [x.contiguous() for x in xs], run=method.execute,
                    to_tensor=_first, keep=(artifact, program))


#: name -> runtime, in the order `--runtime` lists them. Default forms: what `deploy.choose_form`
#: chose on this machine (AMD EPYC, 1 thread; latency_tables/README.md, "Runtimes").
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime(name="eager", package="torch", distribution="torch", pin="torch==2.14.1",
            label="eager PyTorch {version}", suffix=None, default_form="fused",
            exporter=_eager_export, loader=_eager_load),
    Runtime(name="onnxruntime", package="onnxruntime", distribution="onnxruntime",
            pin="onnxruntime==1.32.0", label="onnxruntime {version} CPU", suffix=".onnx",
            default_form="timm", exporter=_onnx_export, loader=_onnx_load),
    Runtime(name="executorch", package="executorch", distribution="executorch",
            pin="executorch==1.5.1", label="executorch {version} XNNPACK", suffix=".pte",
            # timm's form leaves PConv's split (split_with_sizes_copy) outside XNNPACK
            default_form="sliced", exporter=_et_export, loader=_et_load,
            row_export_s=2.0),  # the least of 42 rows of a budgeted build here: 2.2 s
)}


def get_runtime(name: str) -> Runtime:
    """The runtime of a name; `UnknownRuntime` naming the known ones otherwise."""
    if name not in RUNTIMES:
        raise UnknownRuntime(f"--runtime {name!r}: unknown runtime; choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]
