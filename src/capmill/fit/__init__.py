"""The fit step: what a stage must see of the whole input before streaming (bin edges, clusters,
duplicate groups), computed once per run and handed to every worker."""

from capmill.fit.request import FitRequest
from capmill.fit.step import FitRecord, fit_key, load_fit, run_fit_step, save_fits

__all__ = ["FitRecord", "FitRequest", "fit_key", "load_fit", "run_fit_step", "save_fits"]
