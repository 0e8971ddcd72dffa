"""Training workflows built on ``monai.engines`` (VAE-GAN autoencoders, latent diffusion, checkpoints, ssProp) and the
inference workflow every bundle's ``evaluator`` runs (evaluator, batch preparation, handlers, writers)."""

from __future__ import annotations

from .anomaly_writers import AnomalyToInputGridd, SaveAnomalyd
from .autoencoder import (
    AutoencoderKLTrainer,
    ReconstructionInferer,
    ScriptedPerceptualLoss,
    kl_divergence,
    reconstruction_prepare_batch,
)
from .checkpoint import AtomicCheckpointSaver, RandomStates, ResumeFromCheckpoint, load_checkpoint
from .diffusion import LatentDiffusionPrepareBatch, LatentScaleFactor, collect_condition
from .evaluator import (
    AnomalyPrepareBatch,
    CheckConditions,
    ConditionalPrepareBatch,
    GenerationSummary,
    GenerativeEvaluator,
    ProgressionSummary,
)
from .sparse_schedule import SPARSE_KEEP_MODES, SparseBackpropHandler, SparseKeepSchedule
from .weights import LoadWeights, load_network_weights, load_weights, load_widened_weights
from .writers import (
    ProgressionToInputGridd,
    SaveFramesd,
    SaveProgressionPicturesd,
    SaveProgressionSummaryd,
    SaveSamplesd,
)

__all__ = [
    "SPARSE_KEEP_MODES",
    "AnomalyPrepareBatch",
    "AnomalyToInputGridd",
    "AtomicCheckpointSaver",
    "AutoencoderKLTrainer",
    "CheckConditions",
    "ConditionalPrepareBatch",
    "GenerationSummary",
    "GenerativeEvaluator",
    "LatentDiffusionPrepareBatch",
    "LatentScaleFactor",
    "LoadWeights",
    "ProgressionSummary",
    "ProgressionToInputGridd",
    "RandomStates",
    "ReconstructionInferer",
    "ResumeFromCheckpoint",
    "SaveAnomalyd",
    "SaveFramesd",
    "SaveProgressionPicturesd",
    "SaveProgressionSummaryd",
    "SaveSamplesd",
    "ScriptedPerceptualLoss",
    "SparseBackpropHandler",
    "SparseKeepSchedule",
    "collect_condition",
    "kl_divergence",
    "load_checkpoint",
    "load_network_weights",
    "load_weights",
    "load_widened_weights",
    "reconstruction_prepare_batch",
]
