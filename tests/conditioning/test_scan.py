"""ScanCovariateConditioner: covariates to cross-attention, the subject's own scan latent concatenated, the scan kept
in the null condition, and errors that name the problem."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_models import tiny_autoencoder, tiny_unet

from monai_pie import LatentDiffusionModel
from monai_pie.conditioning import ScanCovariateConditioner

NAMES = ("age", "stage", "source_stage")


def conditioner(**kw):
    torch.manual_seed(0)
    return ScanCovariateConditioner(NAMES, {"age": (40, 100)}, embed_dim=8, scan_channels=3, **kw)


def raw(batch=2, scan=None):
    return {"age": torch.full((batch,), 70.0), "stage": torch.linspace(0.2, 0.9, batch),
            "source_stage": torch.full((batch,), 0.1), "scan": torch.randn(batch, 3, 4, 4) if scan is None else scan}


def test_covariates_become_the_context_and_the_scan_is_concatenated():
    c = conditioner()
    r = raw()
    cond = c(r)
    assert cond.context.shape == (2, 1, 8)
    torch.testing.assert_close(cond.concat, r["scan"])
    # the context is the covariate embedding alone: the same as CovariateConditioner's for the same weights
    torch.testing.assert_close(cond.context, c.embed({k: r[k] for k in NAMES}))
    other = c({**r, "stage": torch.tensor([0.5, 0.5])})
    assert not torch.allclose(other.context, cond.context) and torch.equal(other.concat, cond.concat)


def test_the_null_condition_keeps_the_scan_and_drops_the_covariates():
    c = conditioner()
    cond = c(raw())
    null = c.null_condition(cond)
    assert torch.equal(null.concat, cond.concat)
    torch.testing.assert_close(null.context, c.null_token.expand(2, 1, 8))


def test_a_latent_diffusion_model_denoises_with_the_scan_as_extra_channels():
    model = LatentDiffusionModel(tiny_unet(2, 6, 3, context_dim=8), tiny_autoencoder(2), conditioner=conditioner())
    cond = model.make_condition(raw())
    x_t = torch.randn(2, 3, 4, 4)
    model.check_denoiser_input(x_t, cond)
    assert model.denoise(x_t, torch.tensor([10, 10]), cond).shape == (2, 3, 4, 4)


def test_bad_conditions_name_the_problem():
    c = conditioner()
    with pytest.raises(ValueError, match="own scan.*'scan'"):
        c({k: v for k, v in raw().items() if k != "scan"})
    with pytest.raises(ValueError, match="has 2 channels, but the model takes a scan latent of 3"):
        c(raw(scan=torch.randn(2, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"latent \(B, C_lat"):
        c(raw(scan=torch.randn(2, 3)))
    bad = torch.randn(2, 3, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        c(raw(scan=bad))
    with pytest.raises(ValueError, match="covariates missing"):
        c({"scan": torch.randn(1, 3, 4, 4), "age": torch.tensor([70.0])})
    with pytest.raises(ValueError, match="must not be one of the covariate"):
        ScanCovariateConditioner(("age", "scan"))
