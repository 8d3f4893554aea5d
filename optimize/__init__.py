"""Search backends and results: the objective, Pareto early stopping, Optuna and Ray Tune
runners, fronts and reports, selection and export (DESIGN.md, "optimize/")."""

from .config import SearchConfig, SearchConfigError
from .early_stop import History, ParetoEarlyStopping
from .export import PICKS, export_onnx, select
from .objective import MNAS_W, CandidateFailed, Constraints, Objective, mnas_reward
from .processes import run_processes
from .promote import promote, promotion_order
from .report import Candidate, Front, collect, fronts, hypervolume, pareto_mask, write_outputs
from .runner import (
    SAMPLERS,
    StudyMismatch,
    create_or_join,
    evaluated,
    make_sampler,
    open_study,
    recover_zombies,
    run_optuna,
)
from .storage import StorageError, StorageSpec, open_storage

__all__ = ["MNAS_W", "PICKS", "SAMPLERS", "Candidate", "CandidateFailed", "Constraints", "Front",
           "History", "Objective", "ParetoEarlyStopping", "collect", "evaluated", "export_onnx",
           "fronts", "hypervolume", "make_sampler", "mnas_reward", "open_study", "pareto_mask",
           "promote", "promotion_order", "recover_zombies", "run_optuna", "run_processes", "select",
           "write_outputs", "StorageError", "StorageSpec", "StudyMismatch", "create_or_join",
           "open_storage", "SearchConfig", "SearchConfigError"]
