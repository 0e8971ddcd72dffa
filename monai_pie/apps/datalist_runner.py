"""Run a per-image application (progression, ...) over every item of one datalist split."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["output_names", "run_datalist", "run_image_or_datalist"]


def _strip_suffixes(name: str) -> str:
    from ..data.cxr_readers import IMAGE_EXTENSIONS

    # only known image extensions: a suffix-less DICOM UID ("1.2.840.1") keeps its dots
    for ext in sorted((*IMAGE_EXTENSIONS, ".mha", ".nrrd"), key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def output_names(images: list[str], root: str | None = None) -> list[str]:
    """One distinct folder name per image: the file name without its extension, or, where names repeat (CheXpert's
    ``patient1/study1/view1_frontal.jpg``), the path under ``root`` with ``/`` as ``__``; a numeric suffix as the
    last resort."""
    base = [_strip_suffixes(Path(p).name) for p in images]
    if len(set(base)) < len(base):
        rel = []
        for p in images:
            try:
                r = Path(p).resolve().relative_to(Path(root).resolve()) if root else Path(p)
            except ValueError:
                r = Path(p)
            rel.append(_strip_suffixes("__".join(part for part in r.parts if part not in ("/", ".."))))
        base = rel
    seen: dict[str, int] = {}
    out = []
    for name in base:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def run_datalist(
    run_one: Callable[..., dict[str, Any]],
    datalist: str,
    dataset_dir: str | None,
    split: str,
    output_dir: str,
    item_options: Mapping[str, tuple[str, Callable[[Any], Any]]] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Call ``run_one(image_path, output_dir/<name>, **kwargs)`` for each item of ``datalist[split]``; names come
    from :func:`output_names`, so two items never share a folder.

    Args:
        run_one: the per-image function; it returns a summary with a ``strip`` path.
        datalist: a Decathlon-style JSON datalist; paths are resolved against ``dataset_dir`` (MONAI resolves
            ``image`` always and other fields when the joined path exists).
        item_options: ``{item field: (keyword of run_one, converter)}``; fields present in an item override
            ``kwargs`` for that item (e.g. ``{"roi": ("roi_path", str), "age": ("age", float)}``).
    """
    from monai.data import load_decathlon_datalist

    if not Path(datalist).is_file():
        raise FileNotFoundError(f"datalist not found: {datalist}")
    items = load_decathlon_datalist(datalist, True, split, base_dir=dataset_dir)
    names = output_names([item["image"] for item in items], dataset_dir)
    results = {}
    for item, stem in zip(items, names):
        kw = dict(kwargs)
        for field, (name, convert) in (item_options or {}).items():
            if item.get(field) not in (None, ""):
                kw[name] = convert(item[field])
        results[stem] = run_one(item["image"], str(Path(output_dir) / stem), **kw)
    return {"num_images": len(results), "outputs": {k: v["strip"] for k, v in results.items()}}


def run_image_or_datalist(
    run_one: Callable[..., dict[str, Any]],
    output_dir: str,
    image: str | None,
    roi: str | None,
    datalist: str | None,
    dataset_dir: str | None,
    split: str,
    item_options: Mapping[str, tuple[str, Callable[[Any], Any]]] | None = None,
    image_hint: str = "an image file",
    **kwargs: Any,
) -> dict[str, Any]:
    """Bundle entry point shared by the progression apps: ``run_one(image, output_dir, roi_path=roi, **kwargs)``
    for one ``image``, or :func:`run_datalist` over ``datalist[split]`` when a datalist is given."""
    if datalist is None:
        if image is None:
            raise ValueError(f"give `image` ({image_hint}) or `datalist`.")
        return run_one(image, output_dir, roi_path=roi, **kwargs)
    return run_datalist(run_one, datalist, dataset_dir, split, output_dir, item_options, **kwargs)
