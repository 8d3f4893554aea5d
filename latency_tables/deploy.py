"""The deployment form of a runtime, chosen by measurement (issue 23, part 3).

The same trained network can be written several ways that give the same logits
(`search_space.forms.FORMS`: timm's split/concat form, the same with slices, the fused `addmm`
form, the `narrow` form with no split and no concat); which one is fastest depends on the
runtime: the fused form wins in eager PyTorch and is 28x slower than the sliced form under
ExecuTorch, whose XNNPACK delegate does not take its in-place GEMMs. `choose_form` times every
form, whole networks (FasterNet-T0 and two fixed networks of the space), in the runtime,
checks each form's logits against the training form in eager PyTorch (weights of
`check_weights`: logits of order 1), and picks the fastest form that lowers fully into the
runtime's delegate and matches (forms within `TIE_PCT` of it tie: the first in `FORMS` order
wins, so noise does not flip the choice). A table records the choice (`form`, `form_choice` in its
sidecar) and times every layer in that form; `search.py export --runtime` writes the same form.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from search_space import PRESETS, ArchConfig, SearchSpace, build_model
from search_space.forms import FORMS, to_form

from ._device import cpu_model
from .measure import Protocol, time_compiled
from .runtimes import get_runtime

__all__ = ["FormChoice", "FormResult", "check_weights", "choose_form", "form_networks",
           "logits_tolerance"]


@torch.no_grad()
def check_weights(model: nn.Module, seed: int = 0, min_var: float = 0.25) -> nn.Module:
    """Weights for a logits check, in place: BN statistics and affine random (variances
    log-uniform in [min_var, 4]; gamma ~ sqrt(var) keeps the output scale), convs and linears
    at 1/sqrt(fan_in), each block's last conv x0.25 (eval BN does not renormalize).

    The builder's init (std 0.02, BN at identity) gives logits near 1e-5, inside any
    tolerance, and BN that folds to nothing; these give logits of order 1, so a wrong
    formulation or a runtime's wrong kernel shows. (Variances down to 1e-4 make BN's eps
    matter: the tests of BN folding use that.)"""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.5, generator=g)
            m.running_var.uniform_(math.log(min_var), math.log(4.0), generator=g).exp_()
            m.weight.uniform_(0.5, 1.5, generator=g).mul_(m.running_var.sqrt())
            m.bias.normal_(0.0, 0.2, generator=g)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.normal_(0.0, m.weight[0].numel() ** -0.5, generator=g)
            if m.bias is not None:
                m.bias.normal_(0.0, 0.1, generator=g)
    for m in model.modules():
        if isinstance(getattr(m, "mlp", None), nn.Sequential):
            m.mlp[-1].weight.mul_(0.25)
    return model


#: Forms whose summed ms is within this many percent of the fastest tie (ONNX Runtime's timm,
#: sliced and narrow forms swapped places between two runs 15 minutes apart, all within 1 %).
TIE_PCT = 2.0


def logits_tolerance(reference: torch.Tensor) -> float:
    """Largest max |diff| accepted against eager logits: 1e-4 + 1e-3 x max |logit| (fp32
    kernels of another library reorder sums; a wrong formulation is off by far more)."""
    return 1e-4 + 1e-3 * float(reference.abs().max())


@dataclasses.dataclass(frozen=True)
class FormResult:
    """One form in one runtime: ms per image of each network, the worst logits difference, the
    ops left outside the delegate (counts summed over the networks), export seconds (all)."""

    form: str
    ms: tuple[float, ...]
    max_abs_diff: float
    outside: tuple[str, ...]
    export_s: float
    matches: bool

    @property
    def eligible(self) -> bool:
        return not self.outside and self.matches

    def total_ms(self) -> float:
        return sum(self.ms)


@dataclasses.dataclass(frozen=True)
class FormChoice:
    """The measurement behind a table's `form`: every form on the same networks."""

    runtime: str
    runtime_version: str
    chosen: str
    networks: tuple[str, ...]
    results: tuple[FormResult, ...]
    threads: int
    resolution: int
    machine: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen, "runtime": self.runtime, "runtime_version": self.runtime_version,
            "machine": self.machine,
            "networks": list(self.networks), "threads": self.threads, "resolution": self.resolution,
            "rule": "fastest total over the networks among the forms that lower fully into the "
                    "runtime's delegate and whose logits match eager PyTorch; forms within "
                    f"{TIE_PCT:g} % of it tie, the first in FORMS order wins (deploy.choose_form)",
            "forms": {r.form: {"ms": [round(m, 3) for m in r.ms],
                               "max_abs_diff": r.max_abs_diff, "outside_delegate": list(r.outside),
                               "export_s": round(r.export_s, 1), "eligible": r.eligible}
                      for r in self.results},
        }

    def summary(self) -> str:
        """"form narrow chosen for ...: timm 14.6 / 9.1 / 20.3 ms (not fully lowered: ...); ..."."""
        parts = []
        for r in self.results:
            text = f"{r.form} " + " / ".join(f"{m:.1f}" for m in r.ms) + " ms"
            if r.outside:
                text += f" (not fully lowered: {', '.join(r.outside)})"
            elif not r.matches:
                text += f" (logits differ by {r.max_abs_diff:.1e})"
            parts.append(text)
        return (f"form {self.chosen} chosen for {self.runtime} {self.runtime_version}; ms per image "
                f"of {', '.join(self.networks)} measured on {self.machine} ({self.threads} "
                f"thread(s), batch 1, {self.resolution} px): " + "; ".join(parts))


def form_networks(space: SearchSpace | None = None, n: int = 2,
                  seed: int = 23) -> list[tuple[str, ArchConfig]]:
    """FasterNet-T0 and `n` fixed networks of `space` (seed 23: this issue's number)."""
    from .validate import sample_archs

    space = space or SearchSpace.default()
    return [("fasternet_t0", PRESETS["fasternet_t0"])] + [
        (a.arch_id, a) for a in sample_archs(space, n, seed)]


def choose_form(runtime: str, proto: Protocol | None = None, *, resolution: int = 224,
                networks: Sequence[tuple[str, ArchConfig]] | None = None,
                forms: Sequence[str] = tuple(FORMS), rounds: int = 2, num_classes: int = 1000,
                progress: Callable[[str], None] | None = None) -> FormChoice:
    """Time every form in `runtime` on `networks` (default `form_networks()`), check its
    logits, and choose (see the module doc). Raises ValueError where no form qualifies."""
    rt = get_runtime(runtime)
    rt.require()
    proto = dataclasses.replace(proto or Protocol(), runtime=runtime)
    nets = list(networks) if networks is not None else form_networks()
    results = []
    for form in forms:
        ms: list[float | None] = []
        worst, outside, export_s, matches = 0.0, collections.Counter(), 0.0, True
        for name, arch in nets:
            torch.manual_seed(0)
            model = check_weights(build_model(arch, num_classes=num_classes).eval())
            x = torch.randn(proto.batch, 3, resolution, resolution)
            with torch.inference_mode():
                ref = model(x)
            # timed even where ops fall outside the delegate (the record says how much it costs)
            c = rt.compile(to_form(model, form), (x,), proto.threads, strict=False)
            for op in c.outside:  # "aten.addmm x42": summed over the networks
                op_name, count = op.rsplit(" x", 1)
                outside[op_name] += int(count)
            export_s += c.export_s
            diff = float((c(x) - ref).abs().max())
            worst = max(worst, diff)
            matches = matches and diff <= logits_tolerance(ref)
            ms.append(min(time_compiled(c, (x,), proto).median_ms for _ in range(rounds)) / proto.batch)
            if progress:
                progress(f"{form} {name}: {ms[-1]:.2f} ms measured, max |diff| {diff:.1e}"
                         + (f", outside the delegate: {', '.join(c.outside)}" if c.outside else ""))
        results.append(FormResult(form, tuple(ms), worst,
                                  tuple(f"{n} x{k}" for n, k in outside.most_common()), export_s, matches))
    eligible = [r for r in results if r.eligible]
    if not eligible:
        raise ValueError(f"{runtime}: no deployment form lowers fully and matches eager logits ("
                         + "; ".join(f"{r.form}: {', '.join(r.outside) or 'logits differ'}" for r in results)
                         + ")")
    best = min(r.total_ms() for r in eligible)
    # Forms within TIE_PCT of the fastest are ties (run-to-run spread of whole networks on a
    # shared machine); the first in `FORMS` order wins, so the choice is stable under noise.
    chosen = next(r.form for r in eligible if r.total_ms() <= best * (1 + TIE_PCT / 100))
    return FormChoice(runtime, rt.version(), chosen, tuple(n for n, _ in nets), tuple(results),
                      proto.threads, resolution, cpu_model())
