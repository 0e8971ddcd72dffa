"""The user's error as the last line: ``root_cause`` under MONAI's wrappers, ``wrapped_by_monai``, the excepthook."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from monai_pie.utils import errors
from monai_pie.utils.errors import install_bundle_excepthook, root_cause, wrapped_by_monai

MESSAGE = "ROI mask /data/roi.nii.gz is empty (all zeros)."


def _wrapped_chain() -> RuntimeError:
    """Our ValueError raised from a library EOFError, wrapped by two MONAI-style RuntimeErrors."""
    try:
        try:
            try:
                try:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                except EOFError as lib:
                    raise ValueError(MESSAGE) from lib
            except ValueError as ours:
                raise RuntimeError("applying transform <LoadRoid>") from ours
        except RuntimeError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@preprocessing(@datalist)") from inner
    except RuntimeError as outer:
        return outer
    raise AssertionError("unreachable")


@pytest.fixture
def restore_excepthook():
    saved = sys.excepthook
    yield
    sys.excepthook = saved


def test_root_cause_is_our_error_not_the_library_one_beneath():
    exc = _wrapped_chain()
    cause = root_cause(exc)
    assert type(cause) is ValueError
    assert str(cause) == MESSAGE
    assert isinstance(cause.__cause__, EOFError)  # the library error is still in the chain, just not chosen


def test_root_cause_from_the_inner_wrapper_too():
    inner = _wrapped_chain().__cause__
    assert str(inner).startswith("applying transform")
    assert str(root_cause(inner)) == MESSAGE


def test_root_cause_follows_implicit_context():
    try:
        try:
            raise KeyError("image")
        except KeyError:
            raise RuntimeError("Failed to instantiate component 'x'")  # noqa: B904  (implicit __context__)
    except RuntimeError as exc:
        assert type(root_cause(exc)) is KeyError


def test_root_cause_of_a_plain_error_is_itself():
    err = ValueError("bad input")
    assert root_cause(err) is err
    other = RuntimeError("CUDA out of memory")  # a RuntimeError that is not a MONAI wrapper
    other.__cause__ = ValueError("beneath")
    assert root_cause(other) is other


def test_root_cause_of_a_wrapper_without_cause_is_the_wrapper():
    err = RuntimeError("Failed to evaluate ConfigExpression")
    assert root_cause(err) is err


def test_root_cause_stops_on_a_cycle():
    a = RuntimeError("Failed to evaluate a")
    b = RuntimeError("applying transform b")
    a.__cause__, b.__cause__ = b, a
    assert root_cause(a) in (a, b)


def test_root_cause_respects_suppressed_context():
    try:
        try:
            raise KeyError("hidden")
        except KeyError:
            raise RuntimeError("Failed to evaluate x") from None
    except RuntimeError as exc:
        assert root_cause(exc) is exc


def test_wrapped_by_monai():
    assert wrapped_by_monai(_wrapped_chain()) is True
    assert wrapped_by_monai(ValueError(MESSAGE)) is False
    assert wrapped_by_monai(RuntimeError("Failed to evaluate x")) is False  # a wrapper of nothing
    plain = RuntimeError("something else")
    plain.__cause__ = ValueError("x")
    assert wrapped_by_monai(plain) is False


def test_install_bundle_excepthook_only_under_monai_bundle(restore_excepthook):
    saved = sys.excepthook
    assert install_bundle_excepthook() is False  # a pytest process, not `python -m monai.bundle`
    assert sys.excepthook is saved


def test_install_bundle_excepthook_forced_is_idempotent(restore_excepthook):
    saved = sys.excepthook
    assert install_bundle_excepthook(force=True) is True
    hook = sys.excepthook
    assert hook is not saved and getattr(hook, "monai_pie", False)
    assert install_bundle_excepthook(force=True) is True
    assert sys.excepthook is hook  # not wrapped twice


def test_install_bundle_excepthook_under_monai_bundle_argv(restore_excepthook, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/lib/python3/site-packages/monai/bundle/__main__.py", "run"])
    assert install_bundle_excepthook() is True
    assert getattr(sys.excepthook, "monai_pie", False)


def test_hook_prints_the_traceback_then_the_root_cause(restore_excepthook, capsys):
    calls = []
    sys.excepthook = lambda *args: calls.append(args)
    install_bundle_excepthook(force=True)
    exc = _wrapped_chain()
    sys.excepthook(type(exc), exc, exc.__traceback__)
    assert calls == [(type(exc), exc, exc.__traceback__)]  # the previous hook still runs
    assert capsys.readouterr().err == f"\nValueError: {MESSAGE}\n"
    sys.excepthook(ValueError, ValueError("plain"), None)
    assert capsys.readouterr().err == ""  # nothing added for an unwrapped error


def test_uncaught_wrapped_error_ends_with_our_message():
    # load the module by its file: importing the `monai_pie` package (all of MONAI) would take seconds
    script = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("errors", {errors.__file__!r})
        errors = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(errors)
        errors.install_bundle_excepthook(force=True)
        try:
            try:
                try:
                    raise EOFError("library words")
                except EOFError as lib:
                    raise ValueError({MESSAGE!r}) from lib
            except ValueError as ours:
                raise RuntimeError("applying transform <LoadRoid>") from ours
        except RuntimeError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@x") from inner
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"ValueError: {MESSAGE}"
    assert "Traceback" in proc.stderr and "EOFError: library words" in proc.stderr  # full traceback kept
