"""Training targets and training timesteps for MONAI's DDPM tables and rectified flow, with the prediction override."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

from monai_pie.schedules import NoiseSchedule, sample_training_timesteps, training_target

T = 100


def _batch(b: int = 4, shape: tuple[int, ...] = (1, 3, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, *shape, generator=g), torch.randn(b, *shape, generator=g)


def test_epsilon_target_is_the_noise():
    x0, noise = _batch()
    sched = DDPMScheduler(num_train_timesteps=T, prediction_type="epsilon")
    out = training_target(sched, x0, noise, torch.tensor([0, 10, 50, 99]))
    assert torch.equal(out, noise)


def test_sample_target_is_the_clean_image():
    x0, noise = _batch()
    sched = DDPMScheduler(num_train_timesteps=T, prediction_type="sample")
    assert torch.equal(training_target(sched, x0, noise, torch.tensor([0, 10, 50, 99])), x0)


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
def test_v_target_matches_alpha_noise_minus_sigma_x0(scheduler_cls):
    x0, noise = _batch()
    sched = scheduler_cls(num_train_timesteps=T, prediction_type="v_prediction", schedule="scaled_linear_beta")
    schedule = NoiseSchedule.from_scheduler(sched)
    timesteps = torch.tensor([0, 1, 57, T - 1])
    v = training_target(sched, x0, noise, timesteps)
    assert v.shape == x0.shape
    for i, t in enumerate(timesteps.tolist()):
        alpha, sigma = schedule.alpha_sigma(t)
        torch.testing.assert_close(v[i], alpha * noise[i] - sigma * x0[i], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(v[0], v[3])  # the timestep matters


def test_v_target_is_consistent_with_the_schedule_split():
    """The model output that is exactly the v target recovers x0 and the noise through ``NoiseSchedule.split``."""
    x0, noise = _batch(2)
    sched = DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction")
    schedule = NoiseSchedule.from_scheduler(sched)
    t = 40
    v = training_target(sched, x0, noise, torch.tensor([t, t]))
    x_t = schedule.add_noise(x0, noise, t)
    x0_hat, eps_hat = schedule.split(v, x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, noise, atol=1e-5, rtol=1e-5)


def test_rectified_flow_target_is_x0_minus_noise():
    x0, noise = _batch()
    sched = RFlowScheduler(num_train_timesteps=T)
    out = training_target(sched, x0, noise, torch.tensor([0, 10, 50, 99]))
    torch.testing.assert_close(out, x0 - noise)


def test_rectified_flow_target_is_the_velocity_of_monai_add_noise():
    """``d x_t / d(-t/T)`` of MONAI's ``add_noise`` is ``x0 - noise``."""
    x0, noise = _batch(2)
    sched = RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=False)
    t0, t1 = torch.tensor([30.0, 30.0]), torch.tensor([20.0, 20.0])
    velocity = (sched.add_noise(x0, noise, t1) - sched.add_noise(x0, noise, t0)) / ((t0 - t1)[0] / T)
    torch.testing.assert_close(training_target(sched, x0, noise, t0), velocity, atol=1e-4, rtol=1e-4)


def test_prediction_type_override_is_honoured():
    x0, noise = _batch()
    t = torch.tensor([5, 6, 7, 8])
    eps_sched = DDPMScheduler(num_train_timesteps=T, prediction_type="epsilon")
    assert torch.equal(training_target(eps_sched, x0, noise, t, prediction_type="sample"), x0)
    v = training_target(eps_sched, x0, noise, t, prediction_type="v_prediction")
    torch.testing.assert_close(v, eps_sched.get_velocity(x0, noise, t))
    assert not torch.allclose(v, noise)
    sample_sched = DDPMScheduler(num_train_timesteps=T, prediction_type="sample")
    assert torch.equal(training_target(sample_sched, x0, noise, t, prediction_type="epsilon"), noise)
    flow = RFlowScheduler(num_train_timesteps=T)
    assert torch.equal(training_target(flow, x0, noise, t, prediction_type="sample"), x0)


def test_unknown_prediction_type_is_an_error():
    x0, noise = _batch()
    with pytest.raises(ValueError, match=r"`prediction_type` must be one of .* got 'velocity'"):
        training_target(DDPMScheduler(num_train_timesteps=T), x0, noise, torch.zeros(4).long(),
                        prediction_type="velocity")


def test_ddpm_training_timesteps_are_integers_in_range():
    torch.manual_seed(0)
    x0 = torch.zeros(512, 1, 2, 2)
    t = sample_training_timesteps(DDPMScheduler(num_train_timesteps=T), x0)
    assert t.shape == (512,)
    assert t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) <= T - 1
    assert len(t.unique()) > T // 2  # spread over the range, not a constant


def test_rflow_training_timesteps_come_from_the_scheduler():
    x0 = torch.zeros(512, 1, 2, 2)
    sched = RFlowScheduler(num_train_timesteps=T)  # uniform, discrete: rand * T truncated -> [0, T)
    torch.manual_seed(0)
    t = sample_training_timesteps(sched, x0)
    assert t.shape == (512,) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) < T
    torch.manual_seed(0)
    assert torch.equal(t, sched.sample_timesteps(x0))  # the scheduler's own sampler, same random stream


def test_rflow_continuous_and_logit_normal_training_timesteps():
    x0 = torch.zeros(256, 1, 2, 2)
    torch.manual_seed(0)
    t = sample_training_timesteps(RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=False), x0)
    assert t.is_floating_point() and t.shape == (256,)
    assert float(t.min()) >= 0.0 and float(t.max()) <= T
    assert len(t.unique()) == 256
    t = sample_training_timesteps(RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=False,
                                                 sample_method="logit-normal"), x0)
    assert float(t.min()) > 0.0 and float(t.max()) < T  # logistic-normal lies strictly inside (0, 1)


def test_timesteps_for_an_object_without_a_schedule_is_an_error():
    with pytest.raises(TypeError, match="cannot read a noise schedule from object: no `num_train_timesteps`"):
        sample_training_timesteps(object(), torch.zeros(2, 1, 2, 2))


def test_training_target_from_a_noise_schedule_equals_the_monai_scheduler_one():
    sch = DDPMScheduler(1000, prediction_type="v_prediction")
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    from_tables = training_target(NoiseSchedule.from_scheduler(sch), x0, noise, t)
    torch.testing.assert_close(from_tables, training_target(sch, x0, noise, t), atol=1e-5, rtol=1e-5)


def test_matching_strength_carries_a_noise_level_between_schedules():
    vp = NoiseSchedule.from_scheduler(DDPMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015,
                                                    beta_end=0.0195))
    flow = NoiseSchedule.from_scheduler(RFlowScheduler(1000))
    carried = flow.matching_strength(0.3, vp)
    # the same noise-to-signal ratio, which the same share of timesteps is not
    assert flow.noise_to_signal(flow.strength_to_level(carried)) == pytest.approx(
        vp.noise_to_signal(vp.strength_to_level(0.3)), rel=0.01)
    assert carried == pytest.approx(0.546, abs=0.002)
    assert vp.matching_strength(carried, flow) == pytest.approx(0.3, abs=0.002)  # and back
    assert flow.matching_strength(0.3, flow) == pytest.approx(0.3) and flow.matching_strength(0.0, vp) == 0.0
