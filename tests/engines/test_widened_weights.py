"""load_widened_weights: warm-starting a network that takes more inputs from one trained with fewer."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_models import tiny_autoencoder, tiny_unet

from monai_pie import LatentDiffusionModel
from monai_pie.conditioning import CovariateConditioner, ScanCovariateConditioner
from monai_pie.engines import load_widened_weights


def model(scan: bool) -> LatentDiffusionModel:
    torch.manual_seed(1)
    names = ("age", "stage", "source_stage") if scan else ("age", "stage")
    cond = ScanCovariateConditioner(names, embed_dim=8, scan_channels=3) if scan else CovariateConditioner(names, embed_dim=8)
    net = LatentDiffusionModel(tiny_unet(2, 6 if scan else 3, 3, context_dim=8), tiny_autoencoder(2), conditioner=cond)
    with torch.no_grad():  # MONAI zero-initialises the output conv: give every weight a value
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    return net.eval()


def test_the_widened_network_computes_what_the_file_network_did(tmp_path):
    small, wide = model(False), model(True)
    torch.save(small.state_dict(), tmp_path / "small.pt")
    widened = load_widened_weights(wide, tmp_path / "small.pt")
    assert "unet.conv_in.conv.weight" in widened and "conditioner.mlp.0.weight" in widened
    x_t, t = torch.randn(2, 3, 4, 4), torch.tensor([100, 500])
    covariates = {"age": torch.tensor([0.3, 0.8]), "stage": torch.tensor([0.1, 0.9])}
    expected = small.denoise(x_t, t, small.make_condition(covariates))
    got = wide.denoise(x_t, t, wide.make_condition({**covariates, "source_stage": torch.tensor([0.5, 0.2]),
                                                    "scan": torch.randn(2, 3, 4, 4)}))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # new inputs are ignored at the start
    state = torch.load(tmp_path / "small.pt", weights_only=True)
    assert torch.equal(wide.state_dict()["unet.conv_in.conv.weight"][:, :3], state["unet.conv_in.conv.weight"])
    assert not wide.state_dict()["unet.conv_in.conv.weight"][:, 3:].any()


def test_weights_that_cannot_be_widened_are_refused_by_name(tmp_path):
    small, wide = model(False), model(True)
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match="cannot warm-start.*unet.conv_in.conv.weight: file"):
        load_widened_weights(small, tmp_path / "wide.pt")  # narrowing is not widening
    state = small.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["unet.out.2.conv.weight"]
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="missing from the file.*extra.weight: not in the network"):
        load_widened_weights(wide, tmp_path / "odd.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_widened_weights(wide, tmp_path / "nowhere.pt")
