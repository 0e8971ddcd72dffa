"""Networks MONAI core lacks, and the one-module wrappers that bundles load."""

from __future__ import annotations

from .acceleration import PRECISIONS, accelerate_for_inference, inference_autocast, use_channels_last, use_fused_attention
from .compiled import compiled_denoise
from .cuda_graphs import GraphedDenoiser, graphed_denoise, release_cuda_graphs
from .introspection import ConvSpec, first_conv_spec
from .slab_execution import DEFAULT_SLAB_VOXELS, slab_execution_modules, use_slab_execution
from .latent_diffusion import DiffusionModel, LatentDiffusionModel, as_diffusion_model
from .sparse_backprop import (
    SparseBackpropConv1d,
    SparseBackpropConv2d,
    SparseBackpropConv3d,
    convert_to_sparse_backprop,
    get_sparse_keep,
    num_kept_channels,
    revert_sparse_backprop,
    set_sparse_keep,
    sparse_backprop_conv,
    sparse_backprop_modules,
)

__all__ = [
    "DEFAULT_SLAB_VOXELS",
    "PRECISIONS",
    "ConvSpec",
    "DiffusionModel",
    "GraphedDenoiser",
    "LatentDiffusionModel",
    "SparseBackpropConv1d",
    "SparseBackpropConv2d",
    "SparseBackpropConv3d",
    "accelerate_for_inference",
    "as_diffusion_model",
    "compiled_denoise",
    "convert_to_sparse_backprop",
    "first_conv_spec",
    "graphed_denoise",
    "get_sparse_keep",
    "inference_autocast",
    "num_kept_channels",
    "release_cuda_graphs",
    "revert_sparse_backprop",
    "set_sparse_keep",
    "slab_execution_modules",
    "sparse_backprop_conv",
    "sparse_backprop_modules",
    "use_channels_last",
    "use_fused_attention",
    "use_slab_execution",
]
