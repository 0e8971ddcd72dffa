"""Training pieces: covariate conditioner, condition dropout, trainers, atomic checkpoints and resume."""

from __future__ import annotations

import os

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.inferers import SimpleInferer
from monai.networks.schedulers import DDPMScheduler
from helpers.toy_models import tiny_autoencoder, tiny_unet

from monai_pie import LatentDiffusionModel
from monai_pie.conditioning import CovariateConditioner, DiffusionCondition
from monai_pie.engines import (
    AtomicCheckpointSaver,
    AutoencoderKLTrainer,
    LatentDiffusionPrepareBatch,
    LatentScaleFactor,
    ResumeFromCheckpoint,
    kl_divergence,
    load_checkpoint,
)


def test_covariate_conditioner_normalises_validates_and_drops():
    cond = CovariateConditioner(["age", "sex"], {"age": (40, 100)}, embed_dim=8)
    a = cond({"age": [70.0, 70.0], "sex": [0, 1]}).context
    b = cond(torch.tensor([[70.0, 0.0], [70.0, 1.0]])).context
    assert a.shape == (2, 1, 8)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="missing.*sex"):
        cond({"age": [70.0]})
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        cond(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        cond({"age": [float("nan")], "sex": [0]})
    with pytest.raises(ValueError, match="ranges"):
        CovariateConditioner(["age"], {"stage": (0, 1)})
    dropped = cond.drop(a, torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], cond.null_token[0])
    torch.testing.assert_close(dropped[1], a[1])


def test_forward_with_raw_condition_and_drop_mask_equals_null_branch():
    cond = CovariateConditioner(["age"], {"age": (40, 100)}, embed_dim=8)
    with torch.no_grad():
        cond.null_token.normal_()
    model = LatentDiffusionModel(tiny_unet(2, 1, 1, context_dim=8), conditioner=cond).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        out = model(x, t, condition={"age": [60.0, 80.0]}, drop_mask=torch.tensor([True, False]))
        null = model.denoise(x, t, cond.null_condition(DiffusionCondition(context=torch.zeros(2, 1, 8))))
        kept = model.denoise(x, t, cond({"age": [60.0, 80.0]}))
    torch.testing.assert_close(out[0], null[0])
    torch.testing.assert_close(out[1], kept[1])


def test_kl_divergence_is_zero_for_the_prior_and_positive_otherwise():
    assert float(kl_divergence(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4))) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_divergence(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4))) > 0


def data(n=4, size=16):
    return DataLoader(Dataset([{"image": torch.rand(1, size, size), "age": 60.0 + i} for i in range(n)]), batch_size=2)


def test_autoencoder_trainer_reduces_loss_and_trains_the_discriminator():
    torch.manual_seed(0)
    ae = tiny_autoencoder(2)
    from monai.networks.nets import PatchDiscriminator

    disc = PatchDiscriminator(spatial_dims=2, num_layers_d=2, channels=8, in_channels=1, out_channels=1)
    d_before = [p.clone() for p in disc.parameters()]
    dl = data(4)
    tr = AutoencoderKLTrainer("cpu", 6, dl, ae, torch.optim.Adam(ae.parameters(), 3e-3), disc,
                              torch.optim.Adam(disc.parameters(), 1e-3), adv_start_epoch=3)
    losses = []
    tr.add_event_handler(Events.EPOCH_COMPLETED, lambda e: losses.append(e.state.output["l1"]))
    tr.run()
    assert losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))
    with pytest.raises(ValueError, match="perceptual_network_path"):
        AutoencoderKLTrainer("cpu", 1, dl, ae, torch.optim.Adam(ae.parameters()), perceptual_weight=0.1)
    with pytest.raises(FileNotFoundError, match="perceptual network not found"):
        AutoencoderKLTrainer("cpu", 1, dl, ae, torch.optim.Adam(ae.parameters()), perceptual_weight=0.1,
                             perceptual_network_path="/nonexistent/net.ts")


def diffusion_trainer(model, opt, epochs, dl):
    prep = LatentDiffusionPrepareBatch(model, DDPMScheduler(1000), ["age"], condition_dropout=0.5)
    return SupervisedTrainer("cpu", epochs, dl, model, opt, torch.nn.MSELoss(), prepare_batch=prep, inferer=SimpleInferer())


def test_atomic_checkpoints_scale_factor_and_resume(tmp_path):
    torch.manual_seed(0)
    cond = CovariateConditioner(["age"], {"age": (40, 100)}, embed_dim=8)
    model = LatentDiffusionModel(tiny_unet(2, 3, 3, context_dim=8), tiny_autoencoder(2), cond)
    opt = torch.optim.Adam(model.diffusion_parameters(), 1e-4)
    dl = data(4)
    tr = diffusion_trainer(model, opt, 1, dl)
    LatentScaleFactor(model, dl).attach(tr)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": model, "optimizer": opt, "trainer": tr}, network=model)
    saver.attach(tr)
    tr.run()
    assert float(model.scale_factor) != 1.0
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt", "model.pt"]  # no temporary files left
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(state["scale_factor"]) == float(model.scale_factor)

    model2 = LatentDiffusionModel(tiny_unet(2, 3, 3, context_dim=8), tiny_autoencoder(2), CovariateConditioner(["age"], {"age": (40, 100)}, embed_dim=8))
    opt2 = torch.optim.Adam(model2.diffusion_parameters(), 1e-4)
    tr2 = diffusion_trainer(model2, opt2, 3, dl)
    ResumeFromCheckpoint(str(tmp_path / "checkpoint_last.pt"), {"model": model2, "optimizer": opt2, "trainer": tr2}).attach(tr2)
    seen = []
    tr2.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.iteration)))
    tr2.run()
    assert seen[0] == (2, 3) and seen[-1] == (3, 6)  # continued after epoch 1 (2 iterations per epoch)
    assert float(model2.scale_factor) == float(state["scale_factor"])


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt", {})
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt", {})
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match="lacks.*optimizer"):
        load_checkpoint(tmp_path / "partial.pt", {"model": torch.nn.Linear(1, 1), "optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1)})


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    from monai.transforms import Compose, RandSpatialCropd

    from monai_pie.engines import RandomStates

    crop = RandSpatialCropd("image", roi_size=(2, 2), random_size=False)
    states = RandomStates(Compose([crop]))
    torch.save({"rng": states.state_dict()}, tmp_path / "c.pt")
    first = (torch.rand(3), np.random.rand(3), random.random(), crop.R.rand(3))
    states.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random(), crop.R.rand(3))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert np.array_equal(first[3], again[3])  # the random transform's own generator too


def test_the_best_metric_travels_in_the_checkpoint_and_leftovers_are_removed(tmp_path):
    best = AtomicCheckpointSaver(str(tmp_path), {}, network=torch.nn.Linear(1, 1), last_filename=None,
                                 final_filename=None, best_filename="model_best.pt", key_metric_name="val")
    best.best_value = 0.25
    restored = AtomicCheckpointSaver(str(tmp_path), {}, last_filename=None, final_filename=None,
                                     best_filename="model_best.pt")
    restored.load_state_dict(best.state_dict())
    assert restored.best_value == 0.25  # a worse first validation after a resume will not overwrite model_best.pt
    (tmp_path / ".model_best.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"not ours")
    (tmp_path / "model_best.pt").write_bytes(b"kept")
    removed = restored.remove_stale_temporaries()
    assert [p.name for p in removed] == [".model_best.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp", "model_best.pt"]


def test_resume_errors(tmp_path):
    model = torch.nn.Linear(1, 1)
    tr = SupervisedTrainer("cpu", 2, data(2), model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.MSELoss())
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ResumeFromCheckpoint(str(tmp_path / "none.pt"), {"trainer": tr}).attach(tr)
    ResumeFromCheckpoint(str(tmp_path / "none.pt"), {"trainer": tr}, on_missing="warn").attach(tr)  # opt-in
    ResumeFromCheckpoint(str(tmp_path / "none.pt"), {"trainer": tr}, enabled=False).attach(tr)  # off: nothing
    tr.state.epoch, tr.state.iteration = 2, 2
    torch.save({"trainer": tr.state_dict()}, tmp_path / "done.pt")
    tr2 = SupervisedTrainer("cpu", 2, data(2), model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.MSELoss())
    with pytest.raises(ValueError, match="nothing to resume"):
        ResumeFromCheckpoint(str(tmp_path / "done.pt"), {"trainer": tr2}).attach(tr2)


def test_collect_condition_numeric_covariates_and_text_prompts():
    from monai_pie.engines import collect_condition

    batch = {"age": [60.0, 70.0], "stage": torch.tensor([0.1, 0.9]), "report": ["A chest X-ray image, edema",
                                                                              "A chest X-ray image, no finding"]}
    cov = collect_condition(batch, ["age", "stage"], torch.device("cpu"))
    assert set(cov) == {"age", "stage"} and cov["age"].dtype == torch.float32
    assert torch.allclose(cov["stage"], torch.tensor([0.1, 0.9]))
    assert collect_condition(batch, ["report"], torch.device("cpu")) == batch["report"]  # strings pass through
    assert collect_condition(batch, [], torch.device("cpu")) is None
    with pytest.raises(ValueError, match="only condition key"):
        collect_condition(batch, ["report", "age"], torch.device("cpu"))
    with pytest.raises(KeyError, match="lacks condition keys"):
        collect_condition(batch, ["sex"], torch.device("cpu"))


def test_latent_cache_encodes_each_image_once_and_matches_uncached():
    torch.manual_seed(0)
    model = LatentDiffusionModel(tiny_unet(2, 3, 3), tiny_autoencoder(2)).eval()
    calls = []
    encode = model.autoencoder.encode
    model.autoencoder.encode = lambda x: (calls.append(x.shape[0]), encode(x))[1]
    images = torch.rand(3, 1, 16, 16)
    cached = LatentDiffusionPrepareBatch(model, DDPMScheduler(1000), latent_cache_size=2)
    plain = LatentDiffusionPrepareBatch(model, DDPMScheduler(1000))
    z = cached.encode(images[:2])
    torch.testing.assert_close(z, plain.encode(images[:2]))
    calls.clear()
    torch.testing.assert_close(cached.encode(images[[1, 0]]), z[[1, 0]])
    assert calls == []  # both hits: the encoder did not run
    cached.encode(images[2:])  # a new image: one encode, and the least recently used (image 1) is dropped
    assert calls == [1] and len(cached._cache) == 2
    calls.clear()
    cached.encode(images[:1])
    assert calls == []  # image 0 was used more recently than image 1, so it stayed
    model.scale_factor.fill_(2.0)  # a new scale factor must not reuse latents scaled by the old one
    torch.testing.assert_close(cached.encode(images[:1]), 2.0 * z[:1])
    with pytest.raises(ValueError, match="latent_cache_size"):
        LatentDiffusionPrepareBatch(model, DDPMScheduler(1000), latent_cache_size=-1)


def scan_model() -> LatentDiffusionModel:
    from monai_pie.conditioning import ScanCovariateConditioner

    torch.manual_seed(0)
    cond = ScanCovariateConditioner(["stage", "source_stage"], embed_dim=8, scan_channels=3)
    return LatentDiffusionModel(tiny_unet(2, 6, 3, context_dim=8), tiny_autoencoder(2), cond).eval()


def test_scan_conditioned_batches_carry_the_source_images_latent():
    model = scan_model()
    prep = LatentDiffusionPrepareBatch(model, DDPMScheduler(1000), ["stage", "source_stage"], latent_cache_size=8,
                                       scan_image_key="source_image")
    batch = {"image": torch.rand(2, 1, 16, 16), "source_image": torch.rand(2, 1, 16, 16),
             "stage": torch.tensor([0.5, 0.9]), "source_stage": torch.tensor([0.1, 0.9])}
    x_t, target, _, fwd = prep(batch)
    torch.testing.assert_close(fwd["condition"]["scan"], model.encode(batch["source_image"]))
    assert x_t.shape == target.shape == (2, 3, 8, 8)
    assert model(x_t, **fwd).shape == (2, 3, 8, 8)  # the forward the trainer calls takes it
    with pytest.raises(KeyError, match="lacks the scan image 'source_image'.*longitudinal_pairs"):
        prep({k: v for k, v in batch.items() if k != "source_image"})
    with pytest.raises(ValueError, match="set `scan_image_key`"):
        LatentDiffusionPrepareBatch(model, DDPMScheduler(1000), ["stage", "source_stage"])
    plain = LatentDiffusionModel(tiny_unet(2, 3, 3), tiny_autoencoder(2))
    with pytest.raises(ValueError, match="conditioner takes no scan"):
        LatentDiffusionPrepareBatch(plain, DDPMScheduler(1000), scan_image_key="source_image")
