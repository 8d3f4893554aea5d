"""Search space of FasterNet-style networks (Chen et al., CVPR 2023, arXiv 2303.03667).

`KNOBS` declares the architecture knobs once; `ArchConfig` describes one network; `build_model`
builds it (timm-compatible names); `fuse` gives its deployment form (`FORMS`/`to_form`: the
formulations with the same logits, each runtime's fastest); `PRESETS` holds T0..L; `SearchSpace`
samples architectures. Importing this package registers `pconv_fasternet` with
timm.
"""

from . import _timm  # noqa: F401  (registers `pconv_fasternet` with timm)
from ._timm import resolve_arch
from .arch import ACTIVATIONS, ArchConfig, ArchError
from .flops import Complexity, count_params, params_and_flops
from .forms import FORMS, DeployForm, to_form
from .fuse import FusedFasterNet, fuse
from .knobs import KNOBS, Knob
from .model import PConvFasterNet, build_model
from .presets import PRESETS
from .space import DEFAULT_SPACE_PATH, ConstraintInfeasible, SearchSpace

__all__ = ["ACTIVATIONS", "ArchConfig", "ArchError", "Complexity", "ConstraintInfeasible",
           "DEFAULT_SPACE_PATH", "DeployForm", "FORMS", "FusedFasterNet", "KNOBS", "Knob",
           "PConvFasterNet", "PRESETS", "SearchSpace", "build_model", "count_params", "fuse",
           "params_and_flops", "resolve_arch", "to_form"]
