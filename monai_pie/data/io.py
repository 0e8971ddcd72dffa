"""Image and volume I/O with errors that name the file and the cause: 2D radiographs (PNG / JPEG / DICOM / NIfTI),
3D volumes through MONAI's readers, 16-bit PNG and NIfTI writers (atomic), and image file names.

Every reader here turns a library's failure into one message that says which file, what is wrong with it (missing,
empty, truncated, not an image, a degenerate affine) and, where it helps, the library's own words.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "NiftiStorage",
    "check_readable_file",
    "image_extension",
    "load_2d_image",
    "read_volume",
    "save_nifti_like",
    "save_png16",
    "strip_image_extension",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")
_PIL_EXTENSIONS = (".png", ".jpg", ".jpeg")
_DICOM_EXTENSIONS = (".dcm", ".dicom")
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")
# ITU-R BT.601 luma weights, the ones PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)



def image_extension(path: str | os.PathLike) -> str:
    """Lower-case extension of an image file, ``.nii.gz`` as one."""
    path = Path(path)
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble (MIMIC-CXR style files may lack a suffix)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., :3].astype(np.float32) @ _LUMA).astype(np.float32)


def _pil_to_gray(im: Any) -> np.ndarray:
    """PIL image -> ``(H, W)`` float32 in [0, 1], scaled by the bit depth (no contrast stretch) where known."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode in ("L", "LA"):
        return np.asarray(im.getchannel(0), dtype=np.float32) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        if mode == "I" and arr.min() >= 0 and arr.max() <= 65535:
            return arr / 65535.0  # 16-bit grayscale stored as 32-bit integers
        return _minmax(arr)
    if mode in ("P", "PA"):
        im = im.convert("RGBA")  # via RGBA: palette transparency converts without a warning
    elif mode not in ("RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    return _luminance(np.asarray(im)) / 255.0


def _load_pil(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return _pil_to_gray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image file {str(path)!r} ({type(e).__name__}: {e}).") from e


def _load_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(f"reading DICOM file {str(path)!r} needs pydicom: `pip install pydicom`.") from e
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises InvalidDicomError, EOFError, struct/value errors on bad files
        raise ValueError(f"cannot read DICOM file {str(path)!r} ({type(e).__name__}: {e}).") from e
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {str(path)!r} has no pixel data.")
    try:
        arr = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ValueError(
            f"cannot decode the pixel data of DICOM file {str(path)!r} (transfer syntax {syntax}; compressed "
            f"data may need pylibjpeg or gdcm) ({type(e).__name__}: {e})."
        ) from e
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        arr = _luminance(arr)  # pydicom returns colour data as RGB
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"DICOM file {str(path)!r} holds pixel data of shape {arr.shape}, not a single 2D image.")
    arr = arr * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    out = _minmax(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out  # MONOCHROME1: the lowest value is displayed white
    return out


def _load_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib errors on bad files
        raise ValueError(f"cannot read NIfTI file {str(path)!r} ({type(e).__name__}: {e}).") from e
    if arr.dtype.fields is not None or np.iscomplexobj(arr):
        raise ValueError(f"NIfTI file {str(path)!r} has dtype {arr.dtype}; expected real scalar intensities.")
    shape = arr.shape
    arr = arr.reshape([n for n in shape if n != 1])
    if arr.ndim != 2:
        raise ValueError(
            f"NIfTI file {str(path)!r} holds an array of shape {shape}; load_2d_image needs a 2D image "
            "(a 3D array is accepted only with one singleton dimension)."
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"NIfTI file {str(path)!r} contains NaN or infinite values.")
    # NIfTI indexes (i, j) = (x, y); rows are y.
    return _minmax(arr.T)


def load_2d_image(path: str | os.PathLike) -> np.ndarray:
    """Load a 2D radiograph as an ``(H, W)`` float32 array in [0, 1] (rows top to bottom).

    * PNG / JPEG (PIL): divided by the bit depth (255 or 65535; no contrast stretch). RGB(A) and palette images
      become grayscale by ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B``; alpha is ignored.
    * DICOM (``.dcm``/``.dicom``, or any file with the DICM preamble; needs pydicom): ``RescaleSlope`` and
      ``RescaleIntercept`` applied, then min-max scaled to [0, 1] (window/level tags are ignored);
      ``MONOCHROME1`` is inverted so that dense is bright. A single-frame multi-frame file is accepted.
    * NIfTI (``.nii``/``.nii.gz``): a 2D array, or 3D/4D with only two non-singleton dimensions; min-max scaled;
      the voxel array (x, y) is transposed to rows x columns; the affine is not applied.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported extension, unreadable / corrupt / empty file (the message names the file and the
            cause), or not a 2D image.
    """
    p = check_readable_file(path, "image")
    ext = image_extension(p)
    if ext in _PIL_EXTENSIONS:
        return _load_pil(p)
    if ext in _DICOM_EXTENSIONS or (ext not in IMAGE_EXTENSIONS and _is_dicom_file(p)):
        return _load_dicom(p)
    if ext in _NIFTI_EXTENSIONS:
        return _load_nifti(p)
    raise ValueError(
        f"unsupported image file {str(p)!r} (extension {ext!r}); expected one of {list(IMAGE_EXTENSIONS)}."
    )


def strip_image_extension(name: str) -> str:
    """``name`` without a known image extension (``.nii.gz`` as one); a suffix-less DICOM UID keeps its dots."""
    for ext in sorted((*IMAGE_EXTENSIONS, ".mha", ".nrrd"), key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def check_readable_file(path: str | os.PathLike, what: str = "image") -> Path:
    """``path`` as a ``Path`` if it is a non-empty regular file; ``FileNotFoundError`` / ``ValueError`` naming it
    otherwise (a folder, a zero-byte file)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if not p.is_file():
        raise ValueError(f"{what} {p} is not a file (a folder?).")
    if p.stat().st_size == 0:
        raise ValueError(f"{what} {p} is empty (0 bytes); was the copy or download interrupted?")
    return p


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _describe_read_error(path: Path, err: BaseException) -> str:
    """A plain-language cause for a failed read: truncated gzip, not a NIfTI, not an image at all."""
    cause = _root_cause(err)
    text = f"{type(cause).__name__}: {cause}"
    name = path.name.lower()
    if isinstance(cause, EOFError) or "end-of-stream" in text or "truncated" in text.lower():
        return f"the file is truncated (ends early: {text})"
    if any(m in text for m in ("Not a gzipped file", "not a gzip file", "CRC check failed")) or \
            ("invalid" in text.lower() and "gzip" in text.lower()):
        return f"the file is corrupt or not gzip-compressed although its name ends in .gz ({text})"
    if name.endswith((".nii", ".nii.gz")) and ("Cannot work out file type" in text or "sizeof_hdr" in text
                                               or "header" in text.lower()):
        return f"the file is not a valid NIfTI image ({text})"
    return text


def read_volume(path: str | os.PathLike, what: str = "image") -> Any:
    """Read a 3D (or 2D) image with MONAI's ``LoadImage`` as a channel-first ``MetaTensor`` ``(C, *spatial)``.

    NIfTI goes through nibabel, other formats (NRRD, MHA, DICOM series folders) through ITK. Errors name the file and
    the cause; a degenerate voxel-to-world matrix (zero or singular affine) is rejected here rather than deep inside
    an orientation transform.

    Args:
        path: the file (or DICOM folder).
        what: what the file is, for messages (``"image"``, ``"ROI mask"``).
    """
    from monai.transforms import EnsureChannelFirst, LoadImage

    p = Path(path)
    if not p.is_dir():
        p = check_readable_file(p, what)
    try:
        img = EnsureChannelFirst()(LoadImage(image_only=True)(str(p)))
    except Exception as err:
        raise ValueError(f"cannot read {what} {p}: {_describe_read_error(p, err)}") from err
    affine = np.asarray(img.affine, dtype=np.float64)
    linear = affine[: len(img.shape) - 1, : len(img.shape) - 1] if affine.shape[0] > 3 else affine
    if not np.isfinite(affine).all() or abs(float(np.linalg.det(linear))) < 1e-12:
        rows = "; ".join(" ".join(f"{v:g}" for v in row) for row in affine[:3])
        raise ValueError(f"{what} {p} has a degenerate voxel-to-world matrix (zero, singular or non-finite affine "
                         f"[{rows}]): its voxels cannot be placed in space. Fix the header (e.g. the voxel sizes or "
                         "the sform) and try again.")
    return img


def save_png16(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an ``(H, W)`` image in [0, 1] as a 16-bit grayscale PNG, atomically (read back with load_2d_image)."""
    from PIL import Image

    arr = (np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 65535 + 0.5).astype(np.uint16)
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"), suffix=".tmp.png")


@dataclass(frozen=True)
class NiftiStorage:
    """How a volume is stored in NIfTI: a data type and, for integer types, an optional fixed ``slope`` / ``inter``
    (value = raw * slope + inter). ``float32`` keeps every bit; an integer type takes a half to a quarter of the
    bytes before compression and, for smooth images, much less after.

    ``NiftiStorage.like(path)`` reads an input file's type and scaling, so outputs can be written as the input was.
    """

    dtype: str = "float32"
    slope: float | None = None
    inter: float | None = None

    @classmethod
    def like(cls, path: str | os.PathLike) -> NiftiStorage:
        """The storage of the NIfTI file at ``path`` (float32 for other formats and unreadable headers)."""
        if not str(path).lower().endswith((".nii", ".nii.gz")):
            return cls()
        import nibabel as nib

        try:
            img = nib.load(str(path))
        except Exception:  # the reader reports unreadable inputs; here only the output's type is at stake
            return cls()
        dtype = np.dtype(img.get_data_dtype())
        if not (np.issubdtype(dtype, np.integer) or dtype == np.float32):
            return cls()
        # nibabel moves a loaded file's scaling from the header to the array proxy
        slope, inter = getattr(img.dataobj, "slope", None), getattr(img.dataobj, "inter", None)
        slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
        inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
        return cls(str(dtype)) if dtype == np.float32 else cls(str(dtype), slope, inter)

    def quantise(self, values: np.ndarray) -> np.ndarray | None:
        """``values`` as raw integers of this storage's fixed scaling, or ``None`` when there is no fixed integer
        scaling or a value falls outside the type's range."""
        dtype = np.dtype(self.dtype)
        if not np.issubdtype(dtype, np.integer) or self.slope is None:
            return None
        raw = np.round((values.astype(np.float64) - (self.inter or 0.0)) / self.slope)
        info = np.iinfo(dtype)
        if not np.isfinite(raw).all() or raw.min() < info.min or raw.max() > info.max:
            return None
        return raw.astype(dtype)


#: the integer type one step wider, for values that leave an integer input's range under its own scaling
_WIDER_INT = {"int8": "int16", "uint8": "int16", "int16": "int32", "uint16": "int32"}


def save_nifti_like(data: np.ndarray | torch.Tensor, affine: Any, path: str | os.PathLike,
                    storage: NiftiStorage | None = None) -> Path:
    """Save ``(X, Y[, Z])`` or ``(1, X, Y[, Z])`` ``data`` as NIfTI with ``affine`` (atomic write).

    Args:
        data: the values, in the units they should read back as.
        affine: a ``(4, 4)`` array or tensor, or anything with an ``.affine`` (a ``MetaTensor``, a nibabel image).
        path: the ``.nii.gz`` to write.
        storage: the on-disk data type and scaling (``None``: float32). An integer type with a fixed ``slope`` /
            ``inter`` is used when every value fits it (values are rounded to its step); otherwise the same scaling in
            the next wider integer type (int16 -> int32, 8-bit -> int16), else float32; an integer type without
            scaling gets a slope and intercept fitted by nibabel to the data's range.
    """
    import nibabel as nib

    arr = np.asarray(data.detach().cpu() if torch.is_tensor(data) else data, dtype=np.float32)
    if arr.ndim in (3, 4) and arr.shape[0] == 1:
        arr = arr[0]
    aff = getattr(affine, "affine", affine)
    aff = aff.numpy() if torch.is_tensor(aff) else np.asarray(aff)
    storage = storage or NiftiStorage()
    dtype = np.dtype(storage.dtype)
    raw = storage.quantise(arr)
    img = nib.Nifti1Image(raw if raw is not None else arr, aff)
    if raw is not None:
        img.header.set_slope_inter(storage.slope, storage.inter)
    elif storage.slope is None:
        img.set_data_dtype(dtype)  # float32, or an integer type nibabel scales to the data's range
    elif (wider := _WIDER_INT.get(dtype.name)) is not None and (
            raw := NiftiStorage(wider, storage.slope, storage.inter).quantise(arr)) is not None:
        # values outside the input's range (an edit brightened a voxel past the input's maximum): the same scaling in
        # the next wider integer type, so every voxel keeps the input's step and unchanged voxels read back exactly;
        # gzip makes the extra high bytes nearly free
        img = nib.Nifti1Image(raw, aff)
        img.header.set_slope_inter(storage.slope, storage.inter)
    # else: float32, so nothing is stored coarser than the input was
    img.header.set_xyzt_units("mm")
    return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=".tmp.nii.gz")
