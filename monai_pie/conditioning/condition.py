"""The one container that carries a diffusion model's conditions through the sampler core."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

__all__ = ["DiffusionCondition"]


@dataclass
class DiffusionCondition:
    """Conditions for one denoiser call; every field is optional.

    Args:
        context: cross-attention context, shape ``(B, L, D)`` (a ``(B, D)`` tensor is read as ``L = 1``).
        class_labels: integer class labels, shape ``(B,)``, for nets built with ``num_class_embeds``.
        concat: un-noised channels concatenated to ``x_t`` along the channel axis, shape ``(B, Cc, *spatial)``
            with the spatial shape of ``x_t`` (e.g. a structure proxy, a parcellation, a masked image).

    A field with batch size 1 is broadcast to the image batch.
    """

    context: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None
    concat: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.context is not None and self.context.ndim == 2:
            self.context = self.context[:, None, :]
        if self.context is not None and self.context.ndim != 3:
            raise ValueError(f"`context` must have shape (B, L, D) or (B, D), got {tuple(self.context.shape)}.")
        if self.class_labels is not None:
            self.class_labels = torch.as_tensor(self.class_labels).reshape(-1).long()

    @classmethod
    def from_any(cls, condition: Any) -> DiffusionCondition:
        """Build from ``None``, a context tensor, a mapping with the field names, or a ``DiffusionCondition``."""
        if condition is None:
            return cls()
        if isinstance(condition, DiffusionCondition):
            return condition
        if torch.is_tensor(condition):
            return cls(context=condition)
        if isinstance(condition, Mapping):
            unknown = set(condition) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(
                    f"`condition` has unknown keys {sorted(unknown)}; use 'context', 'class_labels' and/or 'concat'."
                )
            return cls(**condition)
        raise TypeError(
            f"`condition` must be None, a tensor (cross-attention context), a dict or a DiffusionCondition, "
            f"got {type(condition).__name__}."
        )

    @property
    def is_empty(self) -> bool:
        return self.context is None and self.class_labels is None and self.concat is None

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def batch_size(self) -> int | None:
        sizes = {name: int(t.shape[0]) for name, t in self._tensors().items()}
        non_one = {s for s in sizes.values() if s != 1}
        if len(non_one) > 1:
            raise ValueError(f"condition fields disagree on the batch size: {sizes}.")
        return non_one.pop() if non_one else (1 if sizes else None)

    def expand_to(self, batch_size: int) -> DiffusionCondition:
        """Broadcast fields of batch size 1 to ``batch_size``; error on any other mismatch."""
        out = {}
        for name, t in self._tensors().items():
            if t.shape[0] == batch_size:
                out[name] = t
            elif t.shape[0] == 1:
                out[name] = t.expand(batch_size, *t.shape[1:])
            else:
                raise ValueError(f"condition `{name}` has batch size {t.shape[0]}, but the image batch is {batch_size}.")
        return replace(self, **out)

    def repeat_interleave(self, repeats: int) -> DiffusionCondition:
        """Repeat each batch element ``repeats`` times (for restarts batched along the batch axis)."""
        return replace(self, **{n: t.repeat_interleave(repeats, dim=0) for n, t in self._tensors().items()})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiffusionCondition:
        """Move tensors to ``device``; floating tensors are also cast to ``dtype`` (labels stay integer)."""
        out = {}
        for name, t in self._tensors().items():
            out[name] = t.to(device=device, dtype=dtype) if (dtype is not None and t.is_floating_point()) else t.to(device)
        return replace(self, **out)

    def lerp(self, other: DiffusionCondition, weight: float) -> DiffusionCondition:
        """``(1 - weight) * self + weight * other`` field by field (same batch size); ``weight`` 0 returns ``self``'s
        tensors exactly. Class labels cannot be interpolated: they must be equal, or ``weight`` must be 0 or 1."""
        mine, theirs = self._tensors(), other._tensors()
        if set(mine) != set(theirs):
            raise ValueError(f"cannot interpolate conditions with different fields set: {sorted(mine)} vs {sorted(theirs)}.")
        out = {}
        for name, a in mine.items():
            b = theirs[name]
            if a.shape != b.shape:
                raise ValueError(f"cannot interpolate condition `{name}` of shapes {tuple(a.shape)} and {tuple(b.shape)}.")
            if weight == 0.0 or (not a.is_floating_point() and torch.equal(a, b)):
                out[name] = a
            elif weight == 1.0:
                out[name] = b
            elif not a.is_floating_point():
                raise ValueError(f"cannot interpolate integer condition `{name}` at weight {weight}: labels differ.")
            else:
                out[name] = torch.lerp(a, b.to(a.dtype), float(weight))
        return DiffusionCondition(**out)

    @staticmethod
    def cat(conditions: Sequence[DiffusionCondition]) -> DiffusionCondition:
        """Concatenate along the batch axis; all conditions must have the same fields set."""
        present = [set(c._tensors()) for c in conditions]
        if any(p != present[0] for p in present):
            raise ValueError(f"cannot batch conditions with different fields set: {present}.")
        return DiffusionCondition(**{n: torch.cat([getattr(c, n) for c in conditions]) for n in present[0]})
