"""One module that is the whole (latent) diffusion model: autoencoder, denoiser, conditioner, scale factor."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..conditioning import DiffusionCondition
from .introspection import cross_attention_width, first_conv_spec

__all__ = ["DiffusionModel", "LatentDiffusionModel", "as_diffusion_model"]


@runtime_checkable
class DiffusionModel(Protocol):
    """What the sampler core and every task inferer call on a model; ``LatentDiffusionModel`` implements it.

    Shapes: images ``(B, C, *spatial)``, working-space samples (latents for LDMs) ``(B, C_lat, *latent_spatial)``.
    """

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> working-space sample (identity in pixel space)."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Working-space sample -> image."""

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor,
                condition: DiffusionCondition | None = None) -> torch.Tensor:
        """Model output (noise, sample or velocity) for ``x_t`` at ``timesteps`` ``(B,)``."""

    def make_condition(self, condition: Any) -> DiffusionCondition:
        """Raw condition (covariates, prompts, tensors) -> ``DiffusionCondition``."""

    def null_condition(self, condition: DiffusionCondition) -> DiffusionCondition:
        """The "no condition" counterpart of ``condition`` for classifier-free guidance."""

    def check_image(self, x: torch.Tensor, name: str = "inputs") -> None:
        """Raise ``ValueError`` if the image ``x`` cannot be taken by the model."""

    def check_denoiser_input(self, x_t: torch.Tensor, condition: DiffusionCondition | None,
                             name: str = "inputs") -> None:
        """Raise ``ValueError`` if ``x_t`` with ``condition`` does not fit the denoiser."""


class LatentDiffusionModel(nn.Module):
    """A diffusion model in one ``nn.Module``, so one ``state_dict`` (and one bundle ``models/model.pt``) holds it all.

    The sampler core only needs ``encode``, ``decode`` and ``denoise``; with ``autoencoder=None`` the model works
    in pixel space (``encode``/``decode`` are the identity).

    Args:
        unet: the denoiser, with MONAI ``DiffusionModelUNet``'s signature
            ``unet(x, timesteps, context=None, class_labels=None) -> (B, C_out, *spatial)``.
        autoencoder: optional first stage (e.g. MONAI ``AutoencoderKL``); latents are ``scale_factor * z_mu``.
        conditioner: optional module mapping raw conditions (covariates, tokens, ...) to a ``DiffusionCondition``;
            it may define ``null_condition(condition) -> DiffusionCondition`` for classifier-free guidance.
        scale_factor: latent scale (``1 / std`` of training latents); stored as a buffer, so it is saved with the weights.
        null_class_label: the label a class-conditional net was trained with for "no condition" (label dropout);
            needed for guidance with ``class_labels``.

    Example::

        model = LatentDiffusionModel(unet=DiffusionModelUNet(...), autoencoder=AutoencoderKL(...), scale_factor=0.9)
        z = model.encode(x)                  # (B, C_lat, *latent_spatial)
        out = model.denoise(z, t, DiffusionCondition(context=c))
        x_rec = model.decode(z)              # (B, C, *spatial)
    """

    def __init__(
        self,
        unet: nn.Module,
        autoencoder: nn.Module | None = None,
        conditioner: nn.Module | None = None,
        scale_factor: float = 1.0,
        null_class_label: int | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.autoencoder = autoencoder
        self.conditioner = conditioner
        self.null_class_label = null_class_label
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    # ---------------------------------------------------------------- shapes
    @property
    def spatial_dims(self) -> int | None:
        spec = first_conv_spec(self.autoencoder) or first_conv_spec(self.unet)
        return spec.spatial_dims if spec else None

    @property
    def image_channels(self) -> int | None:
        """Channels of the images the model takes (the autoencoder's input, or the U-Net's in pixel space)."""
        spec = first_conv_spec(self.autoencoder) if self.autoencoder is not None else None
        return spec.in_channels if spec else None

    @property
    def scan_key(self) -> str | None:
        """The condition key of the subject's own scan latent when the conditioner takes one
        (``ScanCovariateConditioner``), else ``None``."""
        return getattr(self.conditioner, "scan_key", None)

    @property
    def unet_in_channels(self) -> int | None:
        spec = first_conv_spec(self.unet)
        return spec.in_channels if spec else None

    def check_image(self, x: torch.Tensor, name: str = "inputs") -> None:
        """Raise ``ValueError`` if ``x`` (``(B, C, *spatial)``) cannot be taken by this model."""
        sd = self.spatial_dims
        if sd is not None and x.ndim != sd + 2:
            raise ValueError(
                f"`{name}` has shape {tuple(x.shape)} ({x.ndim - 2} spatial dims), but the network is {sd}D: "
                f"expected (B, C, {', '.join('HWD'[:sd])})."
            )
        if self.autoencoder is not None:
            c = self.image_channels
            if c is not None and x.shape[1] != c:
                raise ValueError(f"`{name}` has {x.shape[1]} channels, but the autoencoder takes {c}.")

    def check_denoiser_input(self, x_t: torch.Tensor, condition: DiffusionCondition | None, name: str = "inputs") -> None:
        """Raise ``ValueError`` if ``x_t`` plus concatenated condition channels do not fit the U-Net's input."""
        c_in = self.unet_in_channels
        extra = 0 if condition is None or condition.concat is None else int(condition.concat.shape[1])
        if c_in is not None and x_t.shape[1] + extra != c_in:
            what = f"{x_t.shape[1]} channels" + (f" + {extra} concatenated condition channels" if extra else "")
            raise ValueError(
                f"`{name}` gives the denoiser {what} = {x_t.shape[1] + extra}, but it takes {c_in} input channels."
            )
        width = cross_attention_width(self.unet) if condition is not None and condition.context is not None else None
        if width is not None and condition.context.shape[-1] != width:
            raise ValueError(
                f"the condition's context has width {condition.context.shape[-1]}, but the U-Net's cross-attention "
                f"takes {width}: the conditioner's embed_dim and the U-Net's cross_attention_dim must agree."
            )
        if condition is not None and condition.concat is not None and condition.concat.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"condition `concat` has spatial shape {tuple(condition.concat.shape[2:])}, "
                f"but the denoiser works on {tuple(x_t.shape[2:])}."
            )

    # ---------------------------------------------------------------- stages
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, *spatial)`` -> scaled latent ``(B, C_lat, *latent_spatial)`` (deterministic: the mean)."""
        if self.autoencoder is None:
            return x
        ae = self.autoencoder
        out = ae.encode(x)
        if isinstance(out, (tuple, list)):  # AutoencoderKL: (z_mu, z_sigma); use the mean for reproducible edits
            z = out[0]
        elif hasattr(ae, "encode_stage_2_inputs"):  # e.g. VQVAE: quantised latents
            z = ae.encode_stage_2_inputs(x)
        else:
            z = out
        return z * self.scale_factor.to(z.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent ``(B, C_lat, *latent_spatial)`` -> image ``(B, C, *spatial)``."""
        if self.autoencoder is None:
            return z
        z = z / self.scale_factor.to(z.dtype)
        ae = self.autoencoder
        return ae.decode_stage_2_outputs(z) if hasattr(ae, "decode_stage_2_outputs") else ae.decode(z)

    def denoise(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: DiffusionCondition | None = None
    ) -> torch.Tensor:
        """Model output (noise, sample or velocity, as trained) for ``x_t`` ``(B, C_lat, *spatial)`` at ``timesteps`` ``(B,)``."""
        cond = condition if condition is not None else DiffusionCondition()
        x = x_t if cond.concat is None else torch.cat([x_t, cond.concat.to(x_t.dtype)], dim=1)
        kwargs: dict[str, Any] = {}
        if cond.context is not None:
            kwargs["context"] = cond.context.to(x_t.dtype)
        if cond.class_labels is not None:
            kwargs["class_labels"] = cond.class_labels
        return self.unet(x, timesteps, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        condition: Any = None,
        drop_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser output for ``x`` ``(B, C_lat, *spatial)``; the training entry point (DDP calls ``forward``).

        ``context``/``class_labels`` are passed to the U-Net as in MONAI. A raw ``condition`` (covariates, tokens, a
        dict, a ``DiffusionCondition``) goes through the conditioner inside the graph, so the conditioner trains with
        the U-Net; ``drop_mask`` ``(B,)`` replaces those rows by the null condition (classifier-free guidance
        training).
        """
        cond = self.make_condition(condition)
        if context is not None:
            cond.context = context if context.ndim == 3 else context[:, None]
        if class_labels is not None:
            cond.class_labels = class_labels
        if drop_mask is not None and not cond.is_empty:
            cond = self.drop_condition(cond, drop_mask)
        return self.denoise(x, timesteps, cond)

    def diffusion_parameters(self) -> list[nn.Parameter]:
        """Parameters trained in the diffusion stage: the U-Net's and the conditioner's (the autoencoder is frozen)."""
        params = list(self.unet.parameters())
        if self.conditioner is not None:
            params += list(self.conditioner.parameters())
        return params

    # ---------------------------------------------------------------- conditions
    def make_condition(self, condition: Any) -> DiffusionCondition:
        """Raw condition -> ``DiffusionCondition`` (through the conditioner when there is one)."""
        if isinstance(condition, DiffusionCondition) or self.conditioner is None:
            return DiffusionCondition.from_any(condition)
        return DiffusionCondition.from_any(self.conditioner(condition))

    def null_condition(self, condition: DiffusionCondition) -> DiffusionCondition:
        """The "no condition" counterpart used by classifier-free guidance.

        The conditioner's ``null_condition`` wins; otherwise the context becomes zeros, class labels become
        ``null_class_label``, and concatenated channels are kept (they carry structure, not the guided condition).
        """
        if self.conditioner is not None and hasattr(self.conditioner, "null_condition"):
            return self.conditioner.null_condition(condition)
        labels = None
        if condition.class_labels is not None:
            if self.null_class_label is None:
                raise ValueError(
                    "guidance with `class_labels` needs the label the model was trained with for 'no condition': "
                    "set `null_class_label` on LatentDiffusionModel or pass `null_condition`."
                )
            labels = torch.full_like(condition.class_labels, self.null_class_label)
        context = None if condition.context is None else torch.zeros_like(condition.context)
        return DiffusionCondition(context=context, class_labels=labels, concat=condition.concat)

    def drop_condition(self, condition: DiffusionCondition, drop_mask: torch.Tensor) -> DiffusionCondition:
        """Replace the batch rows where ``drop_mask`` ``(B,)`` is true by the null condition (label/context dropout)."""
        null = self.null_condition(condition)
        keep = ~drop_mask.bool().reshape(-1)
        out = DiffusionCondition(concat=condition.concat)
        if condition.context is not None:
            k = keep.to(condition.context.dtype).reshape(-1, 1, 1)
            null_ctx = null.context.to(condition.context.dtype).expand_as(condition.context)
            out.context = k * condition.context + (1 - k) * null_ctx
        if condition.class_labels is not None:
            out.class_labels = torch.where(keep.to(condition.class_labels.device), condition.class_labels,
                                           null.class_labels)
        return out


def as_diffusion_model(network: Any) -> DiffusionModel:
    """Return ``network`` if it implements :class:`DiffusionModel` (e.g. a ``LatentDiffusionModel``), else wrap a
    bare denoiser in pixel space.

    A bare denoiser is any module with MONAI ``DiffusionModelUNet``'s forward signature. Wrapping shares its
    parameters (no copy).
    """
    if isinstance(network, DiffusionModel):
        return network
    if not isinstance(network, nn.Module):
        raise TypeError(f"`network` must be an nn.Module, got {type(network).__name__}.")
    return LatentDiffusionModel(unet=network)
