"""A class label plus an individual structure image as a diffusion model's condition (TauAD).

The label (e.g. 0 healthy, 1 unhealthy) goes to the U-Net's class embedding and is dropped to the null label in
training, so classifier-free guidance and null-condition DDIM inversion work. The structure image, derived from the
scan itself (:func:`~monai_pie.data.transforms.pet_structure`), is pooled to the latent grid and concatenated to
``x_t``; it is kept in the null condition, because it carries the subject's anatomy, not the guided class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .condition import DiffusionCondition

__all__ = ["StructureLabelConditioner"]


class StructureLabelConditioner(nn.Module):
    """``{"label": (B,), "structure": (B, 1, *image_spatial)}`` -> class labels + concatenated structure.

    Args:
        latent_size: spatial size of the latents the structure is pooled to, e.g. ``(16, 20, 16)``.
        num_classes: number of real classes; labels must lie in ``[0, num_classes)`` (the null label is
            ``num_classes``, set as the model's ``null_class_label``).
        label_key, structure_key: the raw condition's keys.
    """

    def __init__(self, latent_size: Sequence[int], num_classes: int = 2, label_key: str = "label",
                 structure_key: str = "structure") -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes!r}.")
        self.latent_size = tuple(int(s) for s in latent_size)
        self.num_classes, self.label_key, self.structure_key = int(num_classes), label_key, structure_key

    def forward(self, condition: Mapping[str, Any]) -> DiffusionCondition:
        if not isinstance(condition, Mapping) or self.label_key not in condition or \
                self.structure_key not in condition:
            got = sorted(condition) if isinstance(condition, Mapping) else type(condition).__name__
            raise ValueError(f"the condition must be a dict with {self.label_key!r} (B,) and {self.structure_key!r} "
                             f"(B, 1, *spatial); got {got}.")
        labels = torch.as_tensor(condition[self.label_key]).reshape(-1)
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError(f"`{self.label_key}` must hold whole class numbers, got {labels.tolist()}.")
        labels = labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"`{self.label_key}` must lie in [0, {self.num_classes}) ({self.num_classes} = null), "
                             f"got {labels.tolist()}.")
        structure = torch.as_tensor(condition[self.structure_key])
        structure = structure.as_tensor() if hasattr(structure, "as_tensor") else structure
        if structure.ndim != len(self.latent_size) + 2 or structure.shape[1] != 1:
            raise ValueError(f"`{self.structure_key}` must be (B, 1, *spatial) with {len(self.latent_size)} spatial "
                             f"dims, got {tuple(structure.shape)}.")
        if structure.shape[0] not in (1, labels.numel()):
            raise ValueError(f"`{self.structure_key}` has batch {structure.shape[0]} but `{self.label_key}` has "
                             f"{labels.numel()}.")
        pooled = F.adaptive_avg_pool3d(structure.float(), self.latent_size) if len(self.latent_size) == 3 else \
            F.adaptive_avg_pool2d(structure.float(), self.latent_size)
        return DiffusionCondition(class_labels=labels.to(pooled.device), concat=pooled)
