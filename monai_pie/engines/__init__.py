"""Training workflows built on ``monai.engines``: VAE-GAN autoencoders, latent diffusion, checkpoints, ssProp."""

from __future__ import annotations

from .autoencoder import (
    AutoencoderKLTrainer,
    ReconstructionInferer,
    ScriptedPerceptualLoss,
    kl_divergence,
    reconstruction_prepare_batch,
)
from .checkpoint import AtomicCheckpointSaver, ResumeFromCheckpoint, load_checkpoint
from .diffusion import LatentDiffusionPrepareBatch, LatentScaleFactor, collect_condition
from .sparse_schedule import SPARSE_KEEP_MODES, SparseBackpropHandler, SparseKeepSchedule
from .weights import load_weights

__all__ = [
    "SPARSE_KEEP_MODES",
    "AtomicCheckpointSaver",
    "AutoencoderKLTrainer",
    "LatentDiffusionPrepareBatch",
    "LatentScaleFactor",
    "ReconstructionInferer",
    "ResumeFromCheckpoint",
    "ScriptedPerceptualLoss",
    "SparseBackpropHandler",
    "SparseKeepSchedule",
    "collect_condition",
    "kl_divergence",
    "load_checkpoint",
    "load_weights",
    "reconstruction_prepare_batch",
]
