"""CUDA-graph replay of the denoiser: the bookkeeping (copy-in, replay, per-signature capture, recapture after the
network moves, eager fallback) with a CPU stand-in for the graph, the CPU pass-through, and, where a GPU exists, the
real graphs against the eager call."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from monai_pie import LatentDiffusionModel
from monai_pie.conditioning import DiffusionCondition
from monai_pie.inferers import DiffusionSampler
from monai_pie.networks import GraphedDenoiser, graphed_denoise, release_cuda_graphs
from monai_pie.networks import cuda_graphs
from tests.helpers.toy_models import tiny_unet, with_random_output


def _model() -> LatentDiffusionModel:
    return LatentDiffusionModel(with_random_output(tiny_unet(2, in_channels=4, out_channels=3, context_dim=4), seed=0))


def _inputs(batch: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = DiffusionCondition(context=torch.randn(batch, 1, 4, generator=g),
                              concat=torch.randn(batch, 1, size, size, generator=g))
    return x, t, cond


class _CpuGraph:
    """Stands in for ``torch.cuda.CUDAGraph``: replay recomputes into the recorded output from the recorded inputs."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


@pytest.fixture
def cpu_capture(monkeypatch):
    captures = []

    def capture(self, tensors, rebuild):
        static = [t.clone() for t in tensors]
        out = self.model.denoise(*rebuild(static)).clone()
        captures.append([tuple(t.shape) for t in tensors])
        return _CpuGraph(lambda: out.copy_(self.model.denoise(*rebuild(static)))), static, out

    monkeypatch.setattr(GraphedDenoiser, "_capture", capture)
    return captures


def test_replay_copies_new_inputs_in_and_captures_once_per_signature(cpu_capture):
    model = _model()
    graphed = GraphedDenoiser(model)
    with torch.no_grad():
        for seed in range(3):  # same shapes, new values: one capture, every output that of its own inputs
            x, t, cond = _inputs(seed=seed)
            torch.testing.assert_close(graphed(x, t, cond), model.denoise(x, t, cond), rtol=0, atol=0)
        x, t, cond = _inputs(batch=1, seed=5)  # a new signature (batch 1)
        torch.testing.assert_close(graphed(x, t, cond), model.denoise(x, t, cond), rtol=0, atol=0)
    assert len(cpu_capture) == 2
    out_a = graphed(*_inputs(seed=0))
    out_b = graphed(*_inputs(seed=1))
    assert not torch.equal(out_a, out_b)  # returned outputs are copies, not the recorded buffer


def test_moved_network_is_captured_again(cpu_capture):
    model = _model()
    graphed = GraphedDenoiser(model)
    with torch.no_grad():
        graphed(*_inputs())
        model.to(torch.float64).to(torch.float32)  # new parameter storage: old recordings point at freed memory
        x, t, cond = _inputs(seed=1)
        torch.testing.assert_close(graphed(x, t, cond), model.denoise(x, t, cond), rtol=0, atol=0)
    assert len(cpu_capture) == 2


def test_failed_capture_warns_and_runs_eagerly(monkeypatch):
    def broken(self, tensors, rebuild):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphedDenoiser, "_capture", broken)
    model = _model()
    graphed = GraphedDenoiser(model)
    x, t, cond = _inputs()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="CUDA-graph capture of the denoiser failed"):
        out = graphed(x, t, cond)
    torch.testing.assert_close(out, model.denoise(x, t, cond), rtol=0, atol=0)


def test_signatures_kept_are_bounded(cpu_capture):
    model = _model()
    graphed = GraphedDenoiser(model)
    with torch.no_grad():
        for size in range(4, 4 + 2 * (cuda_graphs.MAX_GRAPHS + 2), 2):
            graphed(*_inputs(size=size))
    assert len(graphed.graphs) == cuda_graphs.MAX_GRAPHS


def test_cpu_tensors_pass_through_without_graphs():
    model = _model()
    x, t, cond = _inputs()
    with torch.no_grad():
        out = graphed_denoise(model, x, t, cond)
    torch.testing.assert_close(out, model.denoise(x, t, cond), rtol=0, atol=0)
    assert model not in cuda_graphs._CACHE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_sampling_matches_eager():
    model = _model().cuda()
    x = torch.randn(1, 3, 8, 8, device="cuda")
    cond = {"context": torch.randn(1, 1, 4, device="cuda"), "concat": torch.randn(1, 1, 8, 8, device="cuda")}
    runs = {}
    for graphs in (False, True):
        sampler = DiffusionSampler(DDIMScheduler(1000), 10, progress=False, cuda_graphs=graphs)
        runs[graphs] = sampler.sample(model, x, condition=cond, guidance_scale=2.0, strength=1.0)
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-5, atol=1e-5)
    graphs = cuda_graphs._CACHE[model].graphs
    assert graphs and all(entry is not None for entry in graphs.values())  # captured, not fallen back to eager
    release_cuda_graphs(model)
    assert model not in cuda_graphs._CACHE


def test_cache_does_not_keep_networks_alive():
    import gc

    model = _model()
    cuda_graphs._CACHE[model] = GraphedDenoiser(model)
    assert len(cuda_graphs._CACHE) == 1
    del model
    gc.collect()
    assert len(cuda_graphs._CACHE) == 0


def test_inference_mode_and_no_grad_get_their_own_recordings(cpu_capture):
    """Buffers recorded under inference mode cannot be written outside it: each mode has its own recording."""
    model = _model()
    graphed = GraphedDenoiser(model)
    x, t, cond = _inputs()
    with torch.inference_mode():
        graphed(x, t, cond)
    with torch.no_grad():
        x2, t2, cond2 = _inputs(seed=3)
        torch.testing.assert_close(graphed(x2, t2, cond2), model.denoise(x2, t2, cond2), rtol=0, atol=0)
    assert len(cpu_capture) == 2
