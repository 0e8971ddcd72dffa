"""Readers, transforms, datalists, and cohort synthesis with known ground truth."""

from __future__ import annotations

from .brain_cohort import (
    BrainRecipe,
    BrainTemplate,
    diagnosis_from_stage,
    load_brain_template,
    synthesize_brain_cohort,
    synthesize_brain_subject,
)
from .cxr_phantoms import (
    CXR_FINDINGS,
    CXR_NO_FINDING,
    CXR_PRESENCE_THRESHOLD,
    CXR_REPORT_PREFIX,
    CXRSubject,
    cxr_report,
    measure_ctr,
    measure_effusion_fraction,
    render_cxr_phantom,
    render_cxr_progression,
    sample_cxr_subject,
    synthesize_cxr_cohort,
)
from .cxr_readers import load_2d_image, read_chexpert_csv, read_image_report_pairs, report_to_labels, report_to_prompt
from .transforms import CheckImaged, LoadImage2Dd, image_2d_transforms

__all__ = [
    "CXR_FINDINGS",
    "CXR_NO_FINDING",
    "CXR_PRESENCE_THRESHOLD",
    "CXR_REPORT_PREFIX",
    "BrainRecipe",
    "BrainTemplate",
    "CXRSubject",
    "CheckImaged",
    "LoadImage2Dd",
    "image_2d_transforms",
    "cxr_report",
    "diagnosis_from_stage",
    "load_2d_image",
    "load_brain_template",
    "measure_ctr",
    "measure_effusion_fraction",
    "read_chexpert_csv",
    "read_image_report_pairs",
    "render_cxr_phantom",
    "render_cxr_progression",
    "report_to_labels",
    "report_to_prompt",
    "sample_cxr_subject",
    "synthesize_brain_cohort",
    "synthesize_brain_subject",
    "synthesize_cxr_cohort",
]
