"""Sweeps: study definitions (:mod:`.study`), the runner (:mod:`.runner`) and reports
(:mod:`.report`). Trials are ``rnnjax train`` processes that write run directories;
nothing here imports a model or a cell."""

from rnnjax.sweeps.report import report
from rnnjax.sweeps.runner import run_sweep, trial_status, vmap_groups
from rnnjax.sweeps.study import Study, Trial, expand, load_study, study_from_dict

__all__ = ["Study", "Trial", "expand", "load_study", "report", "run_sweep", "study_from_dict",
           "trial_status", "vmap_groups"]
