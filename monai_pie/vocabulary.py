"""Domain facts in one home: findings, report prompts, synonyms, diagnoses and stage thresholds.

The bottom layer of the package: text encoders, readers, cohort renderers, inferers' task layers and validations
all import from here and nowhere keeps a copy. Nothing here imports from ``monai_pie``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "BRAIN_DIAGNOSIS_FINDING",
    "BRAIN_FINDINGS",
    "BRAIN_REPORT_PREFIX",
    "CHEXPERT_COLUMNS",
    "CXR_FINDINGS",
    "CXR_NO_FINDING",
    "CXR_REPORT_PREFIX",
    "DIAGNOSES",
    "DIAGNOSIS_STAGE",
    "DIAGNOSIS_THRESHOLDS",
    "FINDINGS",
    "IMPAIRED_DIAGNOSES",
    "MODALITY_PREFIXES",
    "NO_FINDING",
    "SYNONYMS",
    "TAU_BRAAK_REGIONS",
    "canonical_finding",
    "check_stage",
    "cxr_report",
    "diagnosis_from_stage",
    "finding_key",
    "normalize_term",
    "target_stage",
]

# ----------------------------------------------------------------------------------------------- chest X-ray
#: lower-case radiology terms, in the canonical order used in every report
CXR_FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural effusion", "consolidation", "edema")
CXR_REPORT_PREFIX = "A chest X-ray image"
CXR_NO_FINDING = "no finding"
#: CheXpert column spelling of each finding (title case, as in the CheXpert CSVs)
CHEXPERT_COLUMNS: dict[str, str] = {f: f.title() for f in CXR_FINDINGS}

# ----------------------------------------------------------------------------------------------- brain
BRAIN_FINDINGS: tuple[str, ...] = ("mild cognitive impairment", "alzheimer's disease")
BRAIN_REPORT_PREFIX = "A brain MRI image"
DIAGNOSES: tuple[str, ...] = ("CN", "MCI", "AD")
#: disease-stage thresholds between CN / MCI and MCI / AD (stage in [0, 1])
DIAGNOSIS_THRESHOLDS: tuple[float, float] = (0.33, 0.66)
#: the stage a target diagnosis stands for: the centre of its stage band
DIAGNOSIS_STAGE: dict[str, float] = {"CN": 0.15, "MCI": 0.5, "AD": 0.9}
#: prompt finding of each diagnosis (generalist text-conditioned models)
BRAIN_DIAGNOSIS_FINDING: dict[str, str] = {"CN": CXR_NO_FINDING, "MCI": "mild cognitive impairment",
                                           "AD": "alzheimer's disease"}

# ----------------------------------------------------------------------------------------------- tau PET
#: Braak-like stage regions of the synthetic tau-PET cohort in spread order (region ``k`` is label ``k + 1``)
TAU_BRAAK_REGIONS: tuple[str, ...] = (
    "entorhinal",
    "hippocampus",
    "fusiform",
    "inferior_middle_temporal",
    "parietal_precuneus",
    "frontal",
)
#: diagnoses a tau-PET reader calls "impaired" (binary label 1; ``CN`` is 0)
IMPAIRED_DIAGNOSES: tuple[str, ...] = ("MCI", "AD")

# ----------------------------------------------------------------------------------------------- prompts
#: every finding a prompt may name, in slot order for text encoders
FINDINGS: tuple[str, ...] = CXR_FINDINGS + BRAIN_FINDINGS
NO_FINDING = CXR_NO_FINDING
#: prompt prefix -> modality name
MODALITY_PREFIXES: dict[str, str] = {CXR_REPORT_PREFIX: "chest x-ray", BRAIN_REPORT_PREFIX: "brain mri"}
#: spelling variants -> vocabulary term (after :func:`normalize_term`)
SYNONYMS: dict[str, str] = {
    "effusion": "pleural effusion",
    "pleural effusions": "pleural effusion",
    "pulmonary edema": "edema",
    "enlarged heart": "cardiomegaly",
    "cardiac enlargement": "cardiomegaly",
    "ad": "alzheimer's disease",
    "alzheimer disease": "alzheimer's disease",
    "alzheimers disease": "alzheimer's disease",
    "mci": "mild cognitive impairment",
}


def normalize_term(text: str) -> str:
    """Lower case, ``_`` as space, surrounding whitespace stripped, inner whitespace collapsed to single spaces."""
    return " ".join(str(text).replace("_", " ").lower().split())


def canonical_finding(name: str, vocabulary: Sequence[str] = CXR_FINDINGS) -> str:
    """The vocabulary spelling of ``name`` (case, ``_`` and ``-`` insensitive), e.g. ``"Pleural_Effusion"``.

    Raises:
        ValueError: if ``name`` is not in ``vocabulary``.
    """
    norm = normalize_term(str(name).replace("-", " "))
    if norm not in vocabulary:
        raise ValueError(f"unknown finding {name!r}; expected one of {list(vocabulary)}.")
    return norm


def finding_key(name: str) -> str:
    """Datalist / CSV key of a finding: its lower-case spelling with spaces as ``_`` (``"pleural_effusion"``)."""
    return normalize_term(name).replace(" ", "_")


def cxr_report(findings: Iterable[str], order: Sequence[str] = CXR_FINDINGS) -> str:
    """PIE prompt for a set of findings: ``"A chest X-ray image, cardiomegaly, pleural effusion"``.

    Findings are comma-joined after :data:`CXR_REPORT_PREFIX` in the order of ``order`` (canonical order by
    default, whatever order they are given in); an empty set gives ``"A chest X-ray image, no finding"``.
    """
    wanted = {normalize_term(f) for f in findings}
    known = [normalize_term(o) for o in order]
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown} in `findings`; expected names from {list(order)}.")
    present = [o for o in known if o in wanted]
    return ", ".join([CXR_REPORT_PREFIX, *(present or [CXR_NO_FINDING])])


def check_stage(stage: object, name: str = "stage") -> float:
    """``stage`` as a float in [0, 1]; a clear ``ValueError`` for anything else (text, NaN, out of range)."""
    if isinstance(stage, bool):
        raise ValueError(f"`{name}` must be a number in [0, 1], got {stage!r}.")
    try:
        value = float(stage)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number in [0, 1], got {stage!r}.") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"`{name}` must be in [0, 1], got {stage!r}.")
    return value


def diagnosis_from_stage(stage: float) -> str:
    """``"CN"`` below ``DIAGNOSIS_THRESHOLDS[0]``, ``"MCI"`` below ``DIAGNOSIS_THRESHOLDS[1]``, else ``"AD"``."""
    value = check_stage(stage)
    if value < DIAGNOSIS_THRESHOLDS[0]:
        return "CN"
    return "MCI" if value < DIAGNOSIS_THRESHOLDS[1] else "AD"


def target_stage(stage: object = None, diagnosis: str | None = None) -> float:
    """The target disease stage from a stage in [0, 1] (wins when given) or a diagnosis name (CN, MCI, AD)."""
    if stage is not None:
        return check_stage(stage, "target_stage")
    if diagnosis is None:
        raise ValueError("give a target: `target_stage` in [0, 1] or `target_diagnosis` in CN/MCI/AD.")
    key = str(diagnosis).strip().upper()
    if key not in DIAGNOSIS_STAGE:
        raise ValueError(f"`target_diagnosis` must be one of {sorted(DIAGNOSIS_STAGE)}, got {diagnosis!r}.")
    return DIAGNOSIS_STAGE[key]
