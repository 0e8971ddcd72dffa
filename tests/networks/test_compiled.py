"""The compiled denoiser: same outputs as the eager network, eager where compiling would not pay or cannot run."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from monai_pie import LatentDiffusionModel, ProgressionInferer
from monai_pie.conditioning import DiffusionCondition
from monai_pie.inferers import DiffusionSampler
from monai_pie.networks import accelerate_for_inference, compiled, cuda_graphs
from monai_pie.networks.compiled import compiled_denoise, compiles
from tests.helpers.toy_models import tiny_autoencoder, tiny_unet, with_random_output

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="inductor's CPU kernels need a C compiler")


def _model(spatial_dims: int = 2) -> LatentDiffusionModel:
    unet = with_random_output(tiny_unet(spatial_dims, in_channels=3, out_channels=3, context_dim=4))
    return LatentDiffusionModel(unet, tiny_autoencoder(spatial_dims).eval())


def test_compiles_only_where_it_pays():
    model = _model(3)
    with torch.no_grad():
        assert compiles(model, torch.zeros(2, 3, 4, 4, 4))
        assert compiles(model, torch.zeros(1, 3, 4, 4))  # 2D batch 1: no reference-kernel trap
        # batch-1 3D on the CPU: the eager accelerated network calls oneDNN, a compiled graph would not
        assert not compiles(model, torch.zeros(1, 3, 4, 4, 4))
    assert not compiles(model, torch.zeros(2, 3, 4, 4, 4))  # autograd on: training is not what it is for


def test_failed_compilation_warns_once_and_runs_eagerly(monkeypatch):
    model = _model()
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(compiled, "_COMPILED", broken)
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([10, 10])
    cond = DiffusionCondition(context=torch.randn(2, 1, 4))
    with torch.no_grad():
        ref = model.denoise(x, t, cond)
        with pytest.warns(RuntimeWarning, match="could not compile the denoiser.*no C compiler"):
            out = compiled_denoise(model, x, t, cond)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once: the model is called eagerly from then on
            again = compiled_denoise(model, x, t, cond)
    assert len(calls) == 1
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    torch.testing.assert_close(again, ref, atol=0, rtol=0)


def test_call_errors_are_the_models_own(monkeypatch):
    """A wrong input is reported in the network's words, and does not mark the model as uncompilable."""
    model = _model()

    def traced(*args, **kwargs):
        raise RuntimeError("dynamo wrapped error")

    monkeypatch.setattr(compiled, "_COMPILED", traced)
    with torch.no_grad(), pytest.raises(RuntimeError) as err:
        compiled_denoise(model, torch.randn(2, 5, 4, 4), torch.tensor([1, 1]),
                         DiffusionCondition(context=torch.randn(2, 1, 4)))
    assert "dynamo wrapped" not in str(err.value)
    assert model not in compiled._FAILED


@needs_compiler
def test_compiled_progression_matches_eager(monkeypatch):
    """A guided PIE run with the denoiser compiled gives the eager frames to float rounding, through the accelerated
    (slab-swapped, channels-last) network."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # graphs of earlier tests would be reused, and nothing compiled here
    monkeypatch.setattr(compiled, "_COMPILED", None)
    x = torch.rand(1, 1, 16, 16)
    ctx = torch.randn(1, 1, 4)
    frames = {}
    graphs = counters["stats"]["unique_graphs"]
    for compile_denoiser in (False, True):
        net = _model()
        inferer = ProgressionInferer(DDIMScheduler(1000, clip_sample=False), num_rounds=2, num_inference_steps=6,
                                     guidance_scale=3.0, progress=False, compile_denoiser=compile_denoiser)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would make this test vacuous
            frames[compile_denoiser] = inferer(x, net, condition=ctx, seed=0).frames
    assert counters["stats"]["unique_graphs"] > graphs  # the compiled run did go through a compiled graph
    change = (frames[False][-1] - frames[False][0]).abs().mean()
    assert change > 1e-3
    torch.testing.assert_close(frames[True], frames[False], atol=1e-4 * float(change) + 1e-6, rtol=0)


def test_sampler_picks_the_denoiser():
    model = accelerate_for_inference(_model())
    picked = DiffusionSampler(DDIMScheduler(1000), compile_denoiser=True).denoiser(model)
    assert picked.func is compiled_denoise and picked.keywords["eager"].func is cuda_graphs.graphed_denoise
    unaccelerated = DiffusionSampler(DDIMScheduler(1000), accelerate=False, compile_denoiser=True).denoiser(model)
    assert unaccelerated.keywords["eager"] == model.denoise
    assert DiffusionSampler(DDIMScheduler(1000), accelerate=False).denoiser(model) == model.denoise


def test_a_failure_is_remembered_by_the_unet_a_fresh_wrapper_shares(monkeypatch):
    """Samplers wrap a bare U-Net in a new ``LatentDiffusionModel`` on every call: a failed compilation is not tried
    again for the next wrapper of the same U-Net."""
    unet = with_random_output(tiny_unet(2, in_channels=3, out_channels=3, context_dim=4))
    monkeypatch.setattr(compiled, "_COMPILED", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no compiler")))
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([10, 10])
    cond = DiffusionCondition(context=torch.randn(2, 1, 4))
    with torch.no_grad(), pytest.warns(RuntimeWarning):
        compiled_denoise(LatentDiffusionModel(unet), x, t, cond)
    with torch.no_grad():
        assert not compiles(LatentDiffusionModel(unet), x)
