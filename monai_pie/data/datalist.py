"""Datalists: reading Decathlon-style JSON files with clear errors, and turning what a user or a tool passes as a
datalist (paths, dicts) into the items an inference workflow runs, each with its own output folder."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .io import strip_image_extension

__all__ = ["as_items", "generation_items", "load_datalist", "longitudinal_pairs", "output_names"]


def load_datalist(path: str | os.PathLike, split: str = "training", base_dir: str | os.PathLike | None = None,
                  required_keys: Sequence[str] = ("image",)) -> list[dict[str, Any]]:
    """The items of ``split`` in a Decathlon-style JSON datalist, paths resolved against ``base_dir``.

    Resolved as MONAI's ``load_decathlon_datalist`` does: ``image`` always, other string fields when the joined path
    exists; a bare path string is ``{"image": path}`` in any split. Every way a datalist can be wrong gets a message
    naming the file: missing, not JSON (with the line and column), not an object, no such split (the splits it has
    are listed), an empty split, an item that is not a path or a dict, an item without ``required_keys``.

    Args:
        path: the JSON file.
        split: the list to read (``"training"``, ``"validation"``, ``"test"``, ...).
        base_dir: folder relative paths are resolved against (default: the datalist's folder).
        required_keys: fields every item must have (bare path strings count as ``image``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"datalist not found: {p}")
    try:
        data = json.loads(p.read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"datalist {p} is not a text (JSON) file: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist {p} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"datalist {p} must hold a JSON object with lists such as {{\"{split}\": [...]}}, "
                         f"got a {type(data).__name__}.")
    if split not in data:
        lists = sorted(k for k, v in data.items() if isinstance(v, list))
        raise ValueError(f"datalist {p} has no {split!r} list; it has {lists or 'no lists'}.")
    items = data[split]
    if not isinstance(items, list) or not items:
        raise ValueError(f"the {split!r} list of datalist {p} is empty (or not a list): nothing to run.")
    base = Path(base_dir) if base_dir is not None else p.parent
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict):
            raise ValueError(f"item {i} of {split!r} in datalist {p} must be a path or an object, got {item!r}.")
        missing = [k for k in required_keys if item.get(k) in (None, "")]
        if missing:
            raise ValueError(f"item {i} of {split!r} in datalist {p} lacks {missing}: {item!r}.")
        resolved = {}
        for key, value in item.items():
            if isinstance(value, str) and value and (key == "image" or (base / value).exists()):
                value = os.path.normpath(str(base / value))
            resolved[key] = value
        out.append(resolved)
    return out


def longitudinal_pairs(items: Sequence[dict[str, Any]], subject_key: str = "subject_id", order_key: str = "visit",
                       source_fields: Sequence[str] = ("image", "age", "stage"), prefix: str = "source_",
                       include_same: bool = True) -> list[dict[str, Any]]:
    """Every ordered pair of a subject's visits as one training item: the later (or earlier) visit's fields, plus the
    other visit's ``source_fields`` under ``prefix`` (``source_image``, ``source_age``, ``source_stage``).

    Both directions are kept (the covariates say which way the pair goes), and with ``include_same`` a visit is also
    paired with itself, which teaches "no change in the covariates, no change in the image". Subjects with one visit
    give only that self-pair (or nothing).

    Args:
        items: datalist items (e.g. ``load_datalist(...)``), each with ``subject_key``, ``order_key`` and
            ``source_fields``.
        subject_key: the field that groups visits of one subject.
        order_key: the field that orders a subject's visits (pairs are listed in this order).
        source_fields: the fields copied from the source visit.
        prefix: the prefix of the copied fields.
        include_same: pair each visit with itself too.

    Raises:
        ValueError: an item lacks a needed field, or no subject has two visits (no pair teaches a change).
    """
    needed = {subject_key, order_key, *source_fields}
    by_subject: dict[Any, list[dict[str, Any]]] = {}
    for i, item in enumerate(items):
        missing = sorted(needed - set(item))
        if missing:
            raise ValueError(f"item {i} lacks {missing} needed to pair visits: {item!r}.")
        by_subject.setdefault(item[subject_key], []).append(item)
    if not any(len(v) > 1 for v in by_subject.values()):
        raise ValueError(f"no subject has two visits (grouped by {subject_key!r}): longitudinal training needs "
                         "repeated scans of the same subjects.")
    pairs = []
    for visits in by_subject.values():
        visits = sorted(visits, key=lambda v: v[order_key])
        for src in visits:
            for tgt in visits:
                if src is tgt and not include_same:
                    continue
                pairs.append({**tgt, **{prefix + f: src[f] for f in source_fields}})
    return pairs


def output_names(images: Sequence[str], root: str | os.PathLike | None = None) -> list[str]:
    """One distinct folder name per image: the file name without its extension, or, where different files share a
    name (CheXpert's ``patient1/study1/view1_frontal.jpg``), the path under ``root`` with ``/`` as ``__``; a numeric
    suffix as the last resort (the same file listed twice)."""
    base = [strip_image_extension(Path(p).name) for p in images]

    def relative(p: str) -> str:
        try:
            r = Path(p).resolve().relative_to(Path(root).resolve()) if root else Path(p)
        except ValueError:
            r = Path(p)
        return strip_image_extension("__".join(part for part in r.parts if part not in ("/", "..")))

    groups: dict[str, set[str]] = {}
    for name, p in zip(base, images):
        groups.setdefault(name, set()).add(str(Path(p).resolve()))
    names = [relative(p) if len(groups[b]) > 1 else b for b, p in zip(base, images)]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def as_items(datalist: Sequence[Any], output_dir: str | os.PathLike, dataset_dir: str | os.PathLike | None = None,
             subfolders: bool | None = None, image_key: str = "image") -> list[dict[str, Any]]:
    """Normalise a datalist for an inference workflow: each entry a dict with an ``output_dir`` of its own.

    Args:
        datalist: bare paths (what 3D Slicer's bundle runner passes) or dicts with ``image_key``; ``None`` values
            are dropped, so ``{"image": path, "roi": None}`` means "no ROI".
        output_dir: where results go.
        dataset_dir: relative image paths are resolved against it; also the root for output names.
        subfolders: give every item ``output_dir/<name>`` (names from :func:`output_names`, distinct); default: only
            when there are several items.
        image_key: the field holding the image path.

    Returns:
        Copies of the items with absolute-or-resolved ``image_key`` paths and ``output_dir``.
    """
    if isinstance(datalist, (str, os.PathLike)) or not isinstance(datalist, Sequence):
        raise ValueError(f"`datalist` must be a list of image paths or of dicts with {image_key!r}, got {datalist!r}.")
    if not datalist:
        raise ValueError("`datalist` is empty: nothing to run.")
    items = []
    for i, entry in enumerate(datalist):
        item = {image_key: entry} if isinstance(entry, (str, os.PathLike)) else entry
        if not isinstance(item, dict):
            raise ValueError(f"datalist item {i} must be an image path or a dict, got {entry!r}.")
        item = {k: v for k, v in item.items() if v is not None}
        if item.get(image_key) in (None, ""):
            raise ValueError(f"datalist item {i} has no {image_key!r}: {entry!r}.")
        path = Path(str(item[image_key]))
        if dataset_dir is not None and not path.is_absolute() and not path.exists():
            path = Path(dataset_dir) / path
        item[image_key] = str(path)
        items.append(item)
    out = Path(output_dir)
    if subfolders is None:
        subfolders = len(items) > 1
    if subfolders:
        for item, name in zip(items, output_names([it[image_key] for it in items], dataset_dir)):
            item["output_dir"] = str(out / name)
    else:
        for item in items:
            item["output_dir"] = str(out)
    return items


def generation_items(conditions: Any, num_samples: int, prompt_key: str = "prompt") -> list[dict[str, Any]]:
    """The items of a generation run, one per image, each with the ``output_name`` it is saved under.

    Args:
        conditions: one covariate dict (every sample gets it: ``sample_000``, ``sample_001``, ...), or a list of
            prompts (``num_samples`` each, grouped: ``prompt_00/sample_000``, with ``group`` the prompt's index).
        num_samples: samples per condition.
        prompt_key: the item field of a prompt.
    """
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"the number of samples must be an integer >= 1, got {num_samples!r}.")
    if isinstance(conditions, dict):
        return [{**conditions, "output_name": f"sample_{i:03d}"} for i in range(int(num_samples))]
    prompts = [conditions] if isinstance(conditions, str) else list(conditions)
    if not prompts:
        raise ValueError("give at least one prompt, e.g. 'A chest X-ray image, cardiomegaly'.")
    return [{prompt_key: p, "group": g, "output_name": f"prompt_{g:02d}/sample_{i:03d}"}
            for g, p in enumerate(prompts) for i in range(int(num_samples))]
