"""Readers for users' chest X-ray data: CheXpert-style label CSVs, image + free-text report pairs (MIMIC-CXR
style) and a 2D image loader (PNG/JPEG, DICOM, NIfTI).

Every reader returns MONAI datalist items (``{"image": absolute path, "report": ..., <finding_key>: 0/1}``)
whose prompts follow the PIE grammar of :func:`monai_pie.data.synthetic.cxr.cxr_report`.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


from monai_pie.data.io import IMAGE_EXTENSIONS, image_extension
from monai_pie.vocabulary import CXR_FINDINGS, cxr_report, finding_key

__all__ = [
    "FINDING_KEYWORDS",
    "NEGATION_CUES",
    "read_chexpert_csv",
    "read_image_report_pairs",
    "report_to_labels",
    "report_to_prompt",
]

logger = logging.getLogger(__name__)

_MAX_LISTED = 5  # how many offending files an error message names

# Phrases that name each finding in free text (matched case-insensitively on word boundaries, plural "s" allowed).
FINDING_KEYWORDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "cardiomegaly",
        "enlarged heart",
        "heart is enlarged",
        "heart size is enlarged",
        "enlarged cardiac silhouette",
        "cardiac silhouette is enlarged",
        "cardiac enlargement",
    ),
    "pleural effusion": ("pleural effusion", "effusion", "pleural fluid"),
    "consolidation": ("consolidation", "consolidative opacity", "airspace consolidation"),
    "edema": ("edema", "oedema"),
}
# Words that negate a finding named after them in the same clause.
NEGATION_CUES: tuple[str, ...] = ("no", "without", "negative for", "free of", "absence of")
# Phrases removed before matching because they contain a keyword but are a different finding.
_EXCLUDED_PHRASES = ("pericardial effusion",)
_CLAUSE_BREAK = re.compile(r"\b(?:but|however|although|though|whereas)\b", re.IGNORECASE)
_SENTENCE_BREAK = re.compile(r"[.;!?\n]+")


# ----------------------------------------------------------------------------------------- free-text reports


def _norm(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def _keyword_pattern(phrase: str) -> re.Pattern:
    words = r"\s+".join(re.escape(w) for w in phrase.lower().split())
    return re.compile(rf"(?<![a-z]){words}(?:s|es)?(?![a-z])", re.IGNORECASE)


_NEGATION = re.compile(r"(?<![a-z])(?:" + "|".join(r"\s+".join(c.split()) for c in NEGATION_CUES) + r")(?![a-z])", re.I)


def _clauses(text: str) -> list[str]:
    out = []
    for sentence in _SENTENCE_BREAK.split(text):
        out += _CLAUSE_BREAK.split(sentence)
    return [c for c in out if c.strip()]


def report_to_labels(text: str, keywords: Mapping[str, Sequence[str]] | None = None) -> dict[str, int]:
    """Finding labels (0/1) from a free-text report by keyword matching with simple negation handling.

    Rule: the text is split into sentences (``. ; ! ?`` and newlines) and clauses (``but``, ``however``,
    ``although``, ``though``, ``whereas``). A finding is positive when one of its keywords occurs in
    a clause with no negation cue (:data:`NEGATION_CUES`: "no", "without", "negative for", "free of",
    "absence of") *before* it in that clause. So "No pleural effusion." and "Lungs without consolidation" are
    negative, "No pneumothorax, but a small left effusion" is positive. "pericardial effusion" does not count as
    a pleural effusion. Uncertain wording ("possible", "cannot exclude") counts as positive.

    Args:
        text: Report text.
        keywords: ``{finding: phrases}``; default :data:`FINDING_KEYWORDS`. Keys give the label names (via
            :func:`~monai_pie.data.synthetic.cxr.finding_key`) and their order.

    Returns:
        dict: ``{finding_key: 0 or 1}`` for every finding in ``keywords``.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {type(text).__name__}.")
    kw = FINDING_KEYWORDS if keywords is None else keywords
    clauses = _clauses(text.lower())
    for phrase in _EXCLUDED_PHRASES:
        clauses = [re.sub(re.escape(phrase), " ", c) for c in clauses]
    labels = {}
    for finding, phrases in kw.items():
        if isinstance(phrases, str):
            raise TypeError(f"`keywords[{finding!r}]` must be a sequence of phrases, not a single string.")
        patterns = [_keyword_pattern(p) for p in phrases]
        positive = False
        for clause in clauses:
            for pat in patterns:
                for m in pat.finditer(clause):
                    if not _NEGATION.search(clause[: m.start()]):
                        positive = True
                        break
                if positive:
                    break
            if positive:
                break
        labels[finding_key(finding)] = int(positive)
    return labels


def report_to_prompt(text: str, keywords: Mapping[str, Sequence[str]] | None = None) -> str:
    """PIE prompt (``"A chest X-ray image, cardiomegaly, edema"``) for a free-text report; see
    :func:`report_to_labels` for the keyword and negation rule. Findings appear in the order of ``keywords``."""
    kw = FINDING_KEYWORDS if keywords is None else keywords
    labels = report_to_labels(text, kw)
    return cxr_report([f for f in kw if labels[finding_key(f)]], order=list(kw))


# ---------------------------------------------------------------------------------------------------- CSVs


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {str(path)!r} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"cannot parse CSV file {str(path)!r} ({type(e).__name__}: {e}).") from e
    if not header:
        raise ValueError(f"CSV file {str(path)!r} is empty (no header row).")
    return header, rows


def _resolve(rel: str, root: Path) -> Path:
    p = Path(rel)
    return (p if p.is_absolute() else root / p).resolve()


def _check_exist(paths: Sequence[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise FileNotFoundError(f"{len(missing)} image file(s) listed in {what} do not exist: {shown}{more}.")


def _label_value(raw: str | None, uncertain: str, where: str) -> int | None:
    """CheXpert cell -> 0/1, or None for an uncertain label under ``uncertain="ignore"``."""
    v = (raw or "").strip()
    if v == "" or v.lower() == "nan":
        return 0  # blank: not mentioned
    try:
        x = float(v)
    except ValueError:
        x = float("nan")
    if x == 1.0:
        return 1
    if x == 0.0:
        return 0
    if x == -1.0:
        return {"zero": 0, "one": 1, "ignore": None}[uncertain]
    raise ValueError(f"{where}: label {raw!r} is not one of 1, 0, -1 or blank.")


def read_chexpert_csv(
    csv_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    findings: Sequence[str] | None = None,
    uncertain: str = "zero",
    path_column: str = "Path",
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Datalist items from a CheXpert-style label CSV (a path column plus one column per finding).

    Cells are ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) or blank (not mentioned = negative);
    ``1.0``/``0.0``/``-1.0`` spellings are accepted. ``No Finding`` is not read: it is implied by the prompt.

    Args:
        csv_path: The CSV file.
        image_root: Folder the relative paths are resolved against; default: the CSV's folder. For the original CheXpert
            CSVs (paths starting ``CheXpert-v1.0-small/...``) pass the folder that contains the dataset folder.
        findings: Finding columns to read, matched case-insensitively with ``_`` as space (``"pleural_effusion"`` finds
            ``"Pleural Effusion"``); default :data:`~monai_pie.data.synthetic.cxr.CXR_FINDINGS`. Any CheXpert column
            works (``"Lung Opacity"``, ``"Atelectasis"``); in prompts it is spelled in lower case, in this order.
        uncertain: Policy for ``-1``: ``"zero"`` (U-Zeros), ``"one"`` (U-Ones) or ``"ignore"`` (drop the row).
        path_column: Name of the image path column.
        check_files: Raise if listed images are missing (the message names the first few).

    Returns:
        list of dict: ``{"image": absolute path, "report": PIE prompt, <finding_key>: 0/1 ...}`` per kept row, in file
            order.
    """
    if uncertain not in ("zero", "one", "ignore"):
        raise ValueError(f'`uncertain` must be "zero", "one" or "ignore", got {uncertain!r}.')
    path = Path(csv_path)
    header, rows = _read_csv(path)
    if path_column not in header:
        raise ValueError(f"CSV file {str(path)!r} has no path column {path_column!r}; its columns are {header}.")
    requested = list(CXR_FINDINGS if findings is None else findings)
    if not requested or isinstance(findings, str):
        raise ValueError(f"`findings` must be a non-empty sequence of column names, got {findings!r}.")
    by_norm = {_norm(c): c for c in header}
    if "no finding" in {_norm(f) for f in requested}:
        raise ValueError("`findings` must not contain 'No Finding': it is implied when no finding is positive.")
    unknown = [f for f in requested if _norm(f) not in by_norm]
    if unknown:
        raise ValueError(
            f"finding column(s) {unknown} requested in `findings` are not in {str(path)!r}; its columns are {header}."
        )
    columns = [by_norm[_norm(f)] for f in requested]
    names = [_norm(f) for f in requested]  # prompt spelling
    root = Path(image_root) if image_root is not None else path.parent

    items, skipped = [], 0
    for line, row in enumerate(rows, start=2):
        rel = (row.get(path_column) or "").strip()
        if not rel:
            raise ValueError(f"{str(path)!r} line {line}: empty {path_column!r}.")
        values = [_label_value(row.get(c), uncertain, f"{str(path)!r} line {line}, column {c!r}") for c in columns]
        if any(v is None for v in values):
            skipped += 1
            continue
        labels = {finding_key(n): int(v) for n, v in zip(names, values)}
        present = [n for n, v in zip(names, values) if v]
        items.append({"image": str(_resolve(rel, root)), "report": cxr_report(present, order=names), **labels})
    if skipped:
        logger.info("read_chexpert_csv: skipped %d row(s) with uncertain labels (uncertain='ignore').", skipped)
    if check_files:
        _check_exist([Path(it["image"]) for it in items], repr(str(path)))
    return items


# ------------------------------------------------------------------------------------- image + report pairs

_IMAGE_COLUMNS = ("image", "path", "Path", "image_path", "dicom_path", "filename", "file")
_REPORT_COLUMNS = ("report", "text", "report_text", "findings", "impression")


def _pick_column(header: list[str], given: str | None, candidates: Sequence[str], arg: str, path: Path) -> str:
    if given is not None:
        if given not in header:
            raise ValueError(f"`{arg}` {given!r} is not a column of {str(path)!r}; its columns are {header}.")
        return given
    for c in candidates:
        if c in header:
            return c
    raise ValueError(f"{str(path)!r} has none of the columns {list(candidates)}; pass `{arg}` (columns: {header}).")


def _report_for(image: Path) -> Path | None:
    """Sibling ``X.txt`` for ``X.png``; else the MIMIC-CXR layout ``.../s123.txt`` next to the study folder."""
    ext = image_extension(image)
    sibling = image.with_name(image.name[: len(image.name) - len(ext)] + ".txt")
    if sibling.is_file():
        return sibling
    study = image.parent.with_name(image.parent.name + ".txt")
    return study if study.is_file() else None


def read_image_report_pairs(
    source: str | os.PathLike,
    image_column: str | None = None,
    report_column: str | None = None,
    image_root: str | os.PathLike | None = None,
    to_prompt: bool | Callable[[str], str] = False,
    recursive: bool = True,
    missing_report: str = "error",
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Datalist items from image + free-text report pairs (MIMIC-CXR style).

    Args:
        source: Either a CSV with an image path column and a report text column, or a folder where each image
            ``X.png|jpg|jpeg|dcm|dicom|nii|nii.gz`` has its report in a sibling ``X.txt`` (or, MIMIC-CXR layout,
            ``sNNN.txt`` next to the study folder ``sNNN/`` that holds the image).
        image_column, report_column: CSV column names; default: the first present of
            ``image, path, Path, image_path, dicom_path, filename, file`` and
            ``report, text, report_text, findings, impression``.
        image_root: Folder relative CSV paths are resolved against; default: the CSV's folder.
        to_prompt: ``True``: add ``"prompt"`` (:func:`report_to_prompt`) and the 0/1 labels of :func:`report_to_labels`;
            a callable ``str -> str``: add ``"prompt"`` computed by it; ``False``: reports only.
        recursive: Folder mode: search sub-folders too.
        missing_report: Folder mode, images without a report: ``"error"`` (name the first few) or ``"skip"``.
        check_files: CSV mode: raise if listed images are missing.

    Returns:
        list of dict: ``{"image": absolute path, "report": the report text exactly as stored, ["prompt", labels]}``, in
            CSV order or sorted by path.
    """
    if missing_report not in ("error", "skip"):
        raise ValueError(f'`missing_report` must be "error" or "skip", got {missing_report!r}.')
    if not (isinstance(to_prompt, bool) or callable(to_prompt)):
        raise TypeError(f"`to_prompt` must be a bool or a callable str -> str, got {type(to_prompt).__name__}.")
    src = Path(source)
    if src.is_dir():
        pairs = _folder_pairs(src, recursive, missing_report)
    elif src.is_file() and image_extension(src) == ".csv":
        pairs = _csv_pairs(src, image_column, report_column, image_root, check_files)
    elif src.exists():
        raise ValueError(f"`source` {str(src)!r} must be a folder or a .csv file.")
    else:
        raise FileNotFoundError(f"`source` {str(src)!r} does not exist.")

    items = []
    for image, text in pairs:
        item: dict[str, Any] = {"image": str(image), "report": text}
        if to_prompt is True:
            item["prompt"] = report_to_prompt(text)
            item.update(report_to_labels(text))
        elif callable(to_prompt):
            item["prompt"] = to_prompt(text)
        items.append(item)
    return items


def _folder_pairs(folder: Path, recursive: bool, missing_report: str) -> list[tuple[Path, str]]:
    files = folder.rglob("*") if recursive else folder.glob("*")
    images = sorted(p.resolve() for p in files if p.is_file() and image_extension(p) in IMAGE_EXTENSIONS)
    pairs, missing = [], []
    for image in images:
        report = _report_for(image)
        if report is None:
            missing.append(image)
            continue
        pairs.append((image, report.read_text(encoding="utf-8", errors="replace")))
    if missing and missing_report == "error":
        shown = ", ".join(repr(str(m)) for m in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise FileNotFoundError(
            f"{len(missing)} image(s) in {str(folder)!r} have no report (X.txt beside X.png): {shown}{more}; "
            'pass missing_report="skip" to leave them out.'
        )
    if not pairs:
        raise ValueError(f"no image + report pairs found in {str(folder)!r} (extensions {list(IMAGE_EXTENSIONS)}).")
    return pairs


def _csv_pairs(
    path: Path, image_column: str | None, report_column: str | None, image_root: Any, check_files: bool
) -> list[tuple[Path, str]]:
    header, rows = _read_csv(path)
    icol = _pick_column(header, image_column, _IMAGE_COLUMNS, "image_column", path)
    rcol = _pick_column(header, report_column, _REPORT_COLUMNS, "report_column", path)
    root = Path(image_root) if image_root is not None else path.parent
    pairs = []
    for line, row in enumerate(rows, start=2):
        rel = (row.get(icol) or "").strip()
        if not rel:
            raise ValueError(f"{str(path)!r} line {line}: empty {icol!r}.")
        pairs.append((_resolve(rel, root), row.get(rcol) or ""))
    if check_files:
        _check_exist([p for p, _ in pairs], repr(str(path)))
    return pairs
