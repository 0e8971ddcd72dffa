"""Run a per-image application (progression, ...) over every item of one datalist split."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["run_datalist"]


def run_datalist(
    run_one: Callable[..., dict[str, Any]],
    datalist: str,
    dataset_dir: str | None,
    split: str,
    output_dir: str,
    item_options: Mapping[str, tuple[str, Callable[[Any], Any]]] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Call ``run_one(image_path, output_dir/<image stem>, **kwargs)`` for each item of ``datalist[split]``.

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
    results = {}
    for item in items:
        stem = Path(item["image"]).name.split(".")[0]
        kw = dict(kwargs)
        for field, (name, convert) in (item_options or {}).items():
            if item.get(field) not in (None, ""):
                kw[name] = convert(item[field])
        results[stem] = run_one(item["image"], str(Path(output_dir) / stem), **kw)
    return {"num_images": len(results), "outputs": {k: v["strip"] for k, v in results.items()}}
