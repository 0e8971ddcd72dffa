"""The user's error as the last line they see, when a bundle fails under ``python -m monai.bundle``.

MONAI's config system wraps every exception raised while a config item is evaluated ("Failed to evaluate
ConfigExpression ...", "Failed to instantiate component ...", "applying transform ..."), so the last line of a
failed bundle run names the wrapper, not the problem. Importing ``monai_pie`` from a bundle run installs an exception
hook that prints the usual traceback and then the innermost cause as the final line: ``ValueError: ROI mask
/data/roi.nii.gz is empty (all zeros).``
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["install_bundle_excepthook", "root_cause", "wrapped_by_monai"]

#: the messages of MONAI's wrapper exceptions (config evaluation, instantiation, transform application)
MONAI_WRAPPERS = ("Failed to evaluate", "Failed to instantiate", "applying transform", "Component to instantiate must")


def _is_wrapper(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and str(exc).startswith(MONAI_WRAPPERS)


def _cause(exc: BaseException) -> BaseException | None:
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def root_cause(exc: BaseException) -> BaseException:
    """The error under MONAI's wrappers: the first exception of ``exc``'s chain of causes that is not one of them
    (our own message, which already carries the library's words, rather than the library error beneath it)."""
    seen = {id(exc)}
    while _is_wrapper(exc):
        nxt = _cause(exc)
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        exc = nxt
    return exc


def wrapped_by_monai(exc: BaseException) -> bool:
    """Whether ``exc`` is one of MONAI's wrappers around the real error."""
    return _is_wrapper(exc) and root_cause(exc) is not exc


def _hook(previous: object) -> object:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        previous(exc_type, exc, tb)  # type: ignore[operator]  # the full traceback, for debugging
        if wrapped_by_monai(exc):
            cause = root_cause(exc)
            sys.stderr.write(f"\n{type(cause).__name__}: {cause}\n")

    hook.monai_pie = True  # type: ignore[attr-defined]
    return hook


def install_bundle_excepthook(force: bool = False) -> bool:
    """Install the hook when this process is a ``python -m monai.bundle`` run (or ``force``); idempotent.

    Returns:
        Whether the hook is installed.
    """
    main = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not force and not main.endswith(os.path.join("monai", "bundle", "__main__.py")):
        return False
    if not getattr(sys.excepthook, "monai_pie", False):
        sys.excepthook = _hook(sys.excepthook)  # type: ignore[assignment]
    return True
