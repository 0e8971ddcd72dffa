"""The inference workflow pieces: GenerativeEvaluator's per-image predictions, batch preparation and handlers."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.toy_models import tiny_autoencoder, tiny_unet
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.networks.schedulers import DDIMScheduler
from monai.transforms import Compose, Lambdad

from monai_pie import LatentDiffusionModel, ProgressionInferer
from monai_pie.engines import (
    CheckConditions,
    ConditionalPrepareBatch,
    GenerationSummary,
    GenerativeEvaluator,
    LoadWeights,
    ProgressionSummary,
    load_network_weights,
)

SCH = DDIMScheduler(1000, clip_sample=False)


def model() -> LatentDiffusionModel:
    return LatentDiffusionModel(tiny_unet(2, 3, 3, context_dim=4), tiny_autoencoder(2), scale_factor=0.8).eval()


def test_each_image_gets_its_own_prediction_dict():
    items = [{"image": torch.rand(1, 16, 16), "stage": float(i), "name": f"img{i}"} for i in range(3)]
    seen = []

    def keep(d):
        seen.append(d)
        return d

    inferer = ProgressionInferer(SCH, num_rounds=2, num_inference_steps=4, progress=False)
    evaluator = GenerativeEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(items), batch_size=2), network=model(),
        prepare_batch=lambda b, device=None, non_blocking=False, **kw: (b["image"], None, (),
                                                                       {"condition": {"context": torch.ones(len(b["name"]), 1, 4)}}),
        inferer=inferer, postprocessing=Compose([Lambdad("pred", lambda p: p), keep]))
    evaluator.run()
    assert [d["name"] for d in seen] == ["img0", "img1", "img2"]  # batch fields travel with each prediction
    pred = seen[1]["pred"]
    assert pred["frames"].shape == (3, 1, 16, 16) and pred["change_norm"].shape == (2,)
    torch.testing.assert_close(pred["frames"][0], items[1]["image"])  # frame 0 is that image


def test_prepare_batch_maps_condition_fields_and_requires_one_seed_per_batch():
    batch = {"image": torch.zeros(2, 1, 4, 4), "age": torch.tensor([70.0, 80.0]), "sex": torch.tensor([0, 1]),
             "target_stage": torch.tensor([0.9, 0.9]), "stage": torch.tensor([0.1, 0.2]), "roi": torch.ones(2, 1, 4, 4),
             "seed": torch.tensor([3, 3])}
    prep = ConditionalPrepareBatch({"age": "age", "sex": "sex", "stage": "target_stage"}, mask_key="roi")
    image, label, args, kw = prep(batch, "cpu")
    assert image.shape == (2, 1, 4, 4) and label is None and args == ()
    torch.testing.assert_close(kw["condition"]["stage"], torch.tensor([0.9, 0.9]))  # the target, not the datalist's stage
    assert kw["seed"] == 3 and kw["roi_mask"].shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="different seeds"):
        prep(dict(batch, seed=torch.tensor([1, 2])), "cpu")
    with pytest.raises(KeyError, match="target_stage"):
        prep({k: v for k, v in batch.items() if k != "target_stage"}, "cpu")
    gen = ConditionalPrepareBatch(["prompt"], image_key=None, seed_key=None)
    inputs, _, _, kw = gen({"prompt": ["a", "b"]}, "cpu")
    assert inputs == ["a", "b"] and kw == {}
    # the image's own condition goes along when every source field is there, and only then
    with_source = ConditionalPrepareBatch({"age": "age", "sex": "sex", "stage": "target_stage"},
                                          source_keys={"age": "age", "sex": "sex", "stage": "source_stage"})
    _, _, _, kw = with_source(dict(batch, source_stage=torch.tensor([0.1, 0.3])), "cpu")
    torch.testing.assert_close(kw["source_condition"]["stage"], torch.tensor([0.1, 0.3]))
    torch.testing.assert_close(kw["condition"]["stage"], torch.tensor([0.9, 0.9]))
    assert "source_condition" not in with_source(batch, "cpu")[3]


class _Engine:
    """The parts of an ignite engine a handler reads."""

    def __init__(self, batch, output):
        self.state = type("S", (), {"batch": batch, "output": output})()


def test_progression_summary_prints_one_summary_or_the_list(capsys):
    h = ProgressionSummary()
    h.reset()
    h.collect(_Engine([{"x": 1}], [{"summary": {"output_dir": "/o/a", "strip": "/o/a/s.png"}}]))
    one = h.report()
    assert one == {"output_dir": "/o/a", "strip": "/o/a/s.png"} and json.loads(capsys.readouterr().out) == one
    h.collect(_Engine([{}], [{"summary": {"output_dir": "/o/b", "strip": "/o/b/s.png"}}]))
    assert h.report() == {"num_images": 2, "outputs": {"a": "/o/a/s.png", "b": "/o/b/s.png"}}


def test_generation_summary_groups_samples_and_draws_the_grid(tmp_path, capsys):
    h = GenerationSummary(tmp_path, header={"prompts": {0: "p0", 1: "p1"}}, group_key="group", grid=True)
    h.start()
    h.collect(_Engine([{"group": torch.tensor(0)}, {"group": torch.tensor(1)}],
                      [{"sample_path": "a.png", "pred": torch.rand(1, 8, 8)},
                       {"sample_path": "b.png", "pred": torch.rand(1, 8, 8)}]))
    summary = h.report()
    assert summary["samples"] == {"0": ["a.png"], "1": ["b.png"]} and summary["prompts"] == {"0": "p0", "1": "p1"}
    assert json.loads((tmp_path / "generation.json").read_text())["grid"] == str(tmp_path / "grid.png")
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (96, 2 * 96)


def test_check_conditions_rejects_bad_prompts_before_sampling():
    from monai_pie.conditioning import FindingsTextEncoder

    net = LatentDiffusionModel(tiny_unet(2, 3, 3, context_dim=8), conditioner=FindingsTextEncoder(embed_dim=8))
    CheckConditions(net, ["A chest X-ray image, edema"])()  # fine
    with pytest.raises(ValueError, match="dragon"):
        CheckConditions(net, ["A chest X-ray image, dragon"])()
    with pytest.raises(ValueError, match="non-empty"):
        CheckConditions(net, [" "])()
    with pytest.raises(ValueError, match="at least one"):
        CheckConditions(net, [])()


def test_load_weights_explains_what_does_not_fit(tmp_path):
    a, b = model(), LatentDiffusionModel(tiny_unet(2, 3, 3, context_dim=6), tiny_autoencoder(2))
    torch.save(a.state_dict(), tmp_path / "a.pt")
    load_network_weights(model(), tmp_path / "a.pt")  # fits
    with pytest.raises(ValueError, match=r"a\.pt do not fit this network: .*of another shape"):
        load_network_weights(b, tmp_path / "a.pt")
    with pytest.raises(FileNotFoundError, match="not a bundle folder.*--bundle_root"):
        LoadWeights(a, tmp_path / "missing.pt", bundle_root=tmp_path)()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="weights not found at .*missing.pt. Train it"):
        LoadWeights(a, tmp_path / "missing.pt", hint="Train it.", bundle_root=tmp_path)()


def test_load_weights_runs_when_the_engine_starts():
    net = model()
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    handler = LoadWeights(net, "unused.pt")
    calls = []
    handler.__call__ = lambda engine=None: calls.append(engine)  # noqa: E731
    engine = type("E", (), {"add_event_handler": lambda self, ev, fn: calls.append(ev)})()
    handler.attach(engine)
    assert calls == [Events.STARTED] and all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
