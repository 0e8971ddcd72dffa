"""Image and volume I/O: 2D radiographs in every format, 3D volumes, and the errors a broken file gets."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_pie.data.io import load_2d_image

try:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
except ImportError:  # pragma: no cover - optional dependency
    pydicom = None
needs_pydicom = pytest.mark.skipif(pydicom is None, reason="pydicom is not installed (DICOM reading is optional)")


def _save_dicom(ds, path):
    """Write a conformant DICOM file with pydicom 3 (``enforce_file_format``) or 2.4 (``write_like_original``), the
    version the ``label`` extra holds for MONAI Label."""
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:
        ds.save_as(path, write_like_original=False)


def _write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path)
    return path


# ------------------------------------------------------------------------------------------- load_2d_image


def test_load_png_grayscale_and_16_bit(tmp_path):
    arr = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    out = load_2d_image(_write_png(tmp_path / "g.png", arr))
    assert out.shape == (6, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-6)
    arr16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    out16 = load_2d_image(_write_png(tmp_path / "g16.png", arr16))
    np.testing.assert_allclose(out16, arr16 / 65535.0, atol=1e-6)


def test_load_rgb_png_and_jpeg_use_luminance_without_warnings(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=-1)
    palette = Image.fromarray(rgb).quantize(colors=4)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_2d_image(_write_png(tmp_path / "rgb.png", rgb))
        out_a = load_2d_image(_write_png(tmp_path / "rgba.png", rgba))
        out_p = load_2d_image(tmp_path / "p.png")
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out_a, expected, atol=1e-5)  # alpha ignored
    assert out_p.shape == (4, 5) and abs(float(out_p.mean()) - expected) < 0.02
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    assert abs(float(load_2d_image(tmp_path / "c.jpg").mean()) - expected) < 0.02


def test_load_nifti_2d_and_singleton_3d(tmp_path):
    img = np.random.default_rng(0).random((7, 9)).astype(np.float32) * 100 + 20  # (H, W)
    nib.save(nib.Nifti1Image(img.T, np.eye(4)), tmp_path / "a.nii.gz")  # NIfTI stores (x, y) = (W, H)
    nib.save(nib.Nifti1Image(img.T[:, :, None], np.eye(4)), tmp_path / "b.nii")
    expected = (img - img.min()) / (img.max() - img.min())
    np.testing.assert_allclose(load_2d_image(tmp_path / "a.nii.gz"), expected, atol=1e-5)
    np.testing.assert_allclose(load_2d_image(tmp_path / "b.nii"), expected, atol=1e-5)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(ValueError, match=r"vol\.nii\.gz.*shape \(4, 5, 3\)"):
        load_2d_image(tmp_path / "vol.nii.gz")


@needs_pydicom
def test_load_dicom_ct_small():
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    if not path.is_file():
        pytest.skip("pydicom's shipped CT_small.dcm is not available")
    out = load_2d_image(path)
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert out.shape == raw.shape == (128, 128) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-5)


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str, slope: float, intercept: float) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    _save_dicom(ds, path)
    return path


@needs_pydicom
def test_load_dicom_monochrome1_and_rescale(tmp_path):
    pixels = np.array([[0, 100], [200, 400]], np.uint16)
    mono2 = load_2d_image(_write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", 2.0, -50.0))
    np.testing.assert_allclose(mono2, [[0, 0.25], [0.5, 1.0]], atol=1e-6)
    # MONOCHROME1: low values display white, so the loader inverts them; a file without suffix is sniffed.
    mono1 = load_2d_image(_write_dicom(tmp_path / "m1", pixels, "MONOCHROME1", 2.0, -50.0))
    np.testing.assert_allclose(mono1, [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)


def test_corrupt_missing_and_unsupported_files_give_clear_errors(tmp_path):
    ok = _write_png(tmp_path / "ok.png", np.full((16, 16), 9, np.uint8)).read_bytes()
    (tmp_path / "trunc.png").write_bytes(ok[: len(ok) // 2])
    (tmp_path / "noise.jpg").write_bytes(b"not a jpeg at all" * 10)
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage")
    for name in ("trunc.png", "noise.jpg", "bad.nii.gz"):
        with pytest.raises(ValueError, match=f"cannot read .*{name.replace('.', '[.]')}"):
            load_2d_image(tmp_path / name)
    if pydicom is not None:
        (tmp_path / "bad.dcm").write_bytes(b"\x00" * 40)
        with pytest.raises(ValueError, match="bad[.]dcm"):
            load_2d_image(tmp_path / "bad.dcm")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match=r"unsupported image file .*x\.bmp.*'\.bmp'"):
        load_2d_image(tmp_path / "x.bmp")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_2d_image(tmp_path / "absent.png")
