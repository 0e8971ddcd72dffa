"""Atomic writes: content, the old file kept and no temporary left when a writer fails, and plain-open file modes."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from monai_pie.utils.io import atomic_save, atomic_write, atomic_write_bytes, atomic_write_text


def _temporaries(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def test_atomic_write_text_writes_utf8_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "note.txt"
    out = atomic_write_text(path, "stage ≥ 0.66 → AD\n")
    assert out == path
    assert path.read_bytes() == "stage ≥ 0.66 → AD\n".encode("utf-8")
    assert _temporaries(path.parent, "note.txt") == []


def test_atomic_write_bytes_replaces_the_old_content(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"old old old old")
    atomic_write_bytes(str(path), b"\x00\x01new")
    assert path.read_bytes() == b"\x00\x01new"
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]


def test_atomic_save_round_trips_through_torch_load(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    atomic_save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["w"], state["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    def half_write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, half_write)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failing_writer_with_no_old_file_leaves_nothing(tmp_path):
    def fail(tmp: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.nii.gz", fail, suffix=".tmp.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_failing_torch_save_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    atomic_save({"v": 1}, path)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("cannot pickle this")

    with pytest.raises(TypeError, match="cannot pickle"):
        atomic_save({"v": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert _temporaries(tmp_path, "model.pt") == []


def test_writer_gets_a_temporary_in_the_target_folder_with_the_suffix(tmp_path):
    seen = []

    def write(tmp: str) -> None:
        seen.append(tmp)
        with open(tmp, "w") as f:
            f.write("x")

    atomic_write(tmp_path / "img.nii.gz", write, suffix=".tmp.nii.gz")
    (tmp,) = seen
    assert os.path.dirname(tmp) == str(tmp_path)
    assert os.path.basename(tmp).startswith(".img.nii.gz.") and tmp.endswith(".tmp.nii.gz")
    assert not os.path.exists(tmp)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_file_mode_is_what_a_plain_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as f:
            f.write("x")
        atomic_write_text(tmp_path / "text.txt", "x")
        atomic_write_bytes(tmp_path / "bytes.bin", b"x")
        atomic_save({"x": 1}, tmp_path / "obj.pt")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == expected
    for name in ("text.txt", "bytes.bin", "obj.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
