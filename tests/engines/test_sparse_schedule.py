"""Keep-fraction schedules for sparse back-propagation and the ignite/MONAI handler that applies them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from monai_pie.engines import SparseBackpropHandler, SparseKeepSchedule
from monai_pie.networks.sparse_backprop import get_sparse_keep, sparse_backprop_modules


def _values(schedule: SparseKeepSchedule, n: int) -> list[float]:
    return [round(schedule.value(i), 6) for i in range(n)]


def test_constant_and_warmup():
    assert _values(SparseKeepSchedule("constant", keep=0.3, warmup=2), 5) == [1, 1, 0.3, 0.3, 0.3]


def test_interleave_alternates_dense_and_sparse():
    assert _values(SparseKeepSchedule("interleave", keep=0.2), 6) == [1, 0.2, 1, 0.2, 1, 0.2]
    assert _values(SparseKeepSchedule("interleave", keep=0.2, warmup=1), 5) == [1, 1, 0.2, 1, 0.2]
    assert _values(SparseKeepSchedule("interleave", keep=0.5, period=4), 8) == [1, 1, 0.5, 0.5, 1, 1, 0.5, 0.5]
    # the paper's headline setting: mean keep 0.6, i.e. 40 % fewer backward conv FLOPs
    assert SparseKeepSchedule("interleave", keep=0.2, total=10).mean_keep() == pytest.approx(0.6)


def test_linear_cosine_bar():
    assert _values(SparseKeepSchedule("linear", keep=0.2, total=5), 7) == [1, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2]
    cos = SparseKeepSchedule("cosine", keep=0.2, total=5)
    expected = [0.2 + 0.4 * (1 + math.cos(math.pi * i / 4)) for i in range(5)] + [0.2]
    assert _values(cos, 6) == [round(v, 6) for v in expected]
    assert _values(SparseKeepSchedule("bar", keep=0.2, total=6), 6) == [1, 1, 1, 0.2, 0.2, 0.2]
    assert _values(SparseKeepSchedule("bar", keep=0.2, total=6, start_keep=0.6), 6) == [0.6] * 3 + [0.2] * 3
    # warm-up shifts the decay: 2 dense steps, then 1 -> 0.2 over the remaining 4
    lin = SparseKeepSchedule("linear", keep=0.2, warmup=2, total=6)
    assert _values(lin, 6) == [1, 1, 1, round(1 - 0.8 / 3, 6), round(1 - 1.6 / 3, 6), 0.2]


def test_value_is_a_pure_function_of_the_step():
    s = SparseKeepSchedule("interleave", keep=0.2)
    assert [s.value(i) for i in (5, 0, 5, 3, 3)] == [0.2, 1.0, 0.2, 0.2, 0.2]
    assert s(4) == s.value(4) == 1.0


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(mode="sawtooth"), "`mode`"),
        (dict(keep=0.0), "`keep`"),
        (dict(keep=1.2), "`keep`"),
        (dict(start_keep=2.0, mode="linear", total=3), "`start_keep`"),
        (dict(period=1), "`period`"),
        (dict(warmup=-1), "`warmup`"),
        (dict(mode="cosine"), "`total`"),
        (dict(mode="linear", total=0), "`total`"),
    ],
)
def test_bad_schedule_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SparseKeepSchedule(**kwargs)


def test_bad_step():
    with pytest.raises(ValueError, match="`step`"):
        SparseKeepSchedule("constant", keep=0.5).value(-1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    # tanh, not relu: no channel of the first conv's gradient can vanish by chance
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1))


def _trainer(net: nn.Module, handler: SparseBackpropHandler, max_epochs: int, n_batches: int = 3):
    from monai.data import DataLoader
    from monai.engines import SupervisedTrainer

    data = [{"image": torch.randn(1, 6, 6), "label": torch.randn(1, 6, 6)} for _ in range(2 * n_batches)]
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=nn.MSELoss(),
        train_handlers=[handler],
    )


def test_handler_sets_keep_per_epoch_on_supervised_trainer():
    net = _net()
    # 8-channel layers: count channels exactly (the default rounds up to whole blocks of 16, i.e. dense here)
    handler = SparseBackpropHandler(network=net, mode="interleave", keep=0.5, warmup_epochs=1, period=2,
                                    channel_multiple=1)
    assert len(sparse_backprop_modules(net)) == 2  # converted at construction
    trainer = _trainer(net, handler, max_epochs=5)
    seen: list[tuple[int, float, int]] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        # gradients of the last step are still on the parameters: count the channels that received one
        kept = int((net[0].weight.grad.flatten(1).abs().sum(1) > 0).sum())
        seen.append((engine.state.epoch, get_sparse_keep(net), kept))

    trainer.run()
    per_epoch = {e: (k, c) for e, k, c in seen}
    assert per_epoch == {1: (1.0, 8), 2: (1.0, 8), 3: (0.5, 4), 4: (1.0, 8), 5: (0.5, 4)}
    assert [k for _, k in handler.history] == [1.0, 1.0, 0.5, 1.0, 0.5]
    assert trainer.state.sparse_keep == 0.5
    assert get_sparse_keep(net) == 1.0  # dense again once the run completed


def test_handler_per_iteration_uses_epoch_length():
    net = _net()
    handler = SparseBackpropHandler(network=net, mode="cosine", keep=0.2, warmup_epochs=1, per_iteration=True)
    trainer = _trainer(net, handler, max_epochs=3, n_batches=3)
    seen: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(get_sparse_keep(net)))
    trainer.run()
    # 3 iterations per epoch: 3 dense warm-up iterations, then cosine 1 -> 0.2 over the remaining 6
    expected = SparseKeepSchedule("cosine", keep=0.2, warmup=3, total=9)
    assert seen == pytest.approx([expected.value(i) for i in range(9)])
    assert seen[:4] == [1.0] * 4 and seen[4] < 1.0 and seen[-1] == pytest.approx(0.2)
    assert seen == sorted(seen, reverse=True)


def test_handler_resumes_from_engine_state():
    net = _net()
    handler = SparseBackpropHandler(network=net, mode="interleave", keep=0.3)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0, 1], max_epochs=2)
    engine.run([0, 1], max_epochs=4)  # continues with epochs 3 and 4
    assert handler.history == [(0, 1.0), (1, 0.3), (2, 1.0), (3, 0.3)]


def test_handler_from_bundle_config():
    from monai.bundle import ConfigParser

    config = {
        "network": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3},
        "handler": {
            "_target_": "monai_pie.engines.SparseBackpropHandler",
            "network": "@network",
            "mode": "interleave",
            "keep": 0.2,
            "warmup_epochs": 1,
            "period": 2,
            "per_iteration": False,
            "max_epochs": 4,
        },
    }
    parser = ConfigParser(config)
    handler = parser.get_parsed_content("handler")
    assert isinstance(handler, SparseBackpropHandler)
    assert handler.network is parser.get_parsed_content("network")
    assert list(sparse_backprop_modules(handler.network)) == [""]
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=4)
    assert [k for _, k in handler.history] == [1.0, 1.0, 0.2, 1.0]


def test_handler_exclude_and_bad_arguments():
    net = _net()
    SparseBackpropHandler(network=net, exclude=["2"])
    assert list(sparse_backprop_modules(net)) == ["0"]
    with pytest.raises(ValueError, match="`network`"):
        SparseBackpropHandler(network=nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="`network`"):
        SparseBackpropHandler(network="net")
    with pytest.raises(ValueError, match="`mode`"):
        SparseBackpropHandler(network=_net(), mode="step")
    with pytest.raises(ValueError, match="`keep`"):
        SparseBackpropHandler(network=_net(), keep=0)
    with pytest.raises(ValueError, match="`warmup_epochs`"):
        SparseBackpropHandler(network=_net(), warmup_epochs=-2)
    with pytest.raises(ValueError, match="`max_epochs`"):
        SparseBackpropHandler(network=_net(), mode="linear", max_epochs=0)
    with pytest.raises(ValueError, match="`per_iteration`"):
        SparseBackpropHandler(network=_net(), per_iteration="yes")
