"""The monai-pie command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_pie.apps.cli import main


def test_version_and_schema(capsys):
    main(["version"])
    assert "monai-pie 0.1.0" in capsys.readouterr().out
    main(["schema"])
    assert Path(capsys.readouterr().out.strip()).is_file()


def test_user_errors_exit_with_a_clear_line(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit) as exc:
        main(["synth", "brain", str(tmp_path), "--num_subjects", "2"])
    assert exc.value.code == 2
    assert "monai-pie: error:" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"  # never overwritten


def test_validate_with_a_missing_cohort_fails_at_once_with_one_line(capsys, tmp_path):
    for task in ("brain", "cxr"):
        with pytest.raises(SystemExit) as exc:
            main(["validate", task, str(tmp_path / "absent"), "--output_dir", str(tmp_path / "out")])
        assert exc.value.code == 2 and "datalist not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_label_app_is_written_outside_the_package_and_slicer_modules_for_every_task(capsys, tmp_path):
    from monai_pie.serving import TASKS, app_source

    main(["label", "app", "--output_dir", str(tmp_path / "app")])
    app = Path(capsys.readouterr().out.strip())
    assert app == tmp_path / "app" and (app / "main.py").read_text() == app_source().read_text()
    assert "MonaiPieApp" in (app / "main.py").read_text()
    main(["slicer", "modules", str(tmp_path / "slicer"), "--tasks", "cxr_progression,brain_generation"])
    written = sorted(Path(p).name for p in capsys.readouterr().out.split())
    assert written == ["MONAIPIEBrainGeneration.py", "MONAIPIECxrProgression.py"] and "cxr_progression" in TASKS
    with pytest.raises(SystemExit) as exc:
        main(["slicer", "modules", str(tmp_path / "slicer"), "--tasks", "tau"])
    assert exc.value.code == 2 and "no task 'tau'" in capsys.readouterr().err


def test_label_serve_passes_its_options_to_monailabel(monkeypatch, tmp_path):
    import shutil
    import subprocess

    calls = []
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    for extra in ([], ["--compile_denoiser"]):
        with pytest.raises(SystemExit):
            main(["label", "serve", str(tmp_path), "--tasks", "brain_progression", "--app_dir", str(tmp_path / "app"),
                  *extra])
    plain, compiled = (" ".join(c) for c in calls)
    assert "--conf tasks brain_progression" in plain and "compile_denoiser" not in plain
    assert "--conf compile_denoiser true" in compiled and "--host 127.0.0.1" in compiled
