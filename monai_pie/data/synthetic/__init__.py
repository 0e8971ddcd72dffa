"""Cohorts with known ground truth, synthesised from templates that ship inside installed packages (see DATA.md)."""

from __future__ import annotations

from .brain import (
    BrainRecipe,
    BrainTemplate,
    load_brain_template,
    synthesize_brain_cohort,
    synthesize_brain_subject,
)
from .cxr import (
    CXR_PRESENCE_THRESHOLD,
    CXRSubject,
    render_cxr_phantom,
    render_cxr_progression,
    sample_cxr_subject,
    synthesize_cxr_cohort,
)
from .generalist import (
    brain_slice_cohort,
    merge_datalists,
    synthesize_generalist_cohort,
)
from .tau import (
    TauRecipe,
    braak_roi_labels,
    synthesize_tau_cohort,
    synthesize_tau_subject,
    tau_grid_affine,
)

__all__ = [
    "CXR_PRESENCE_THRESHOLD",
    "BrainRecipe",
    "BrainTemplate",
    "CXRSubject",
    "TauRecipe",
    "braak_roi_labels",
    "brain_slice_cohort",
    "load_brain_template",
    "merge_datalists",
    "render_cxr_phantom",
    "render_cxr_progression",
    "sample_cxr_subject",
    "synthesize_brain_cohort",
    "synthesize_brain_subject",
    "synthesize_cxr_cohort",
    "synthesize_generalist_cohort",
    "synthesize_tau_cohort",
    "synthesize_tau_subject",
    "tau_grid_affine",
]
