"""The learning-rate schedule equals torchvision's reference: LinearLR warm-up stepped per
iteration in epoch 0, MultiStepLR stepped per epoch."""

from __future__ import annotations

import pytest

from workload.faster_rcnn.schedule import lr_at, resolve_warmup_iters


def reference_lrs(base_lr, epochs, iters, lr_steps, gamma, warmup_factor):
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr, momentum=0.9)
    main = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=lr_steps, gamma=gamma)
    out = {}
    for epoch in range(epochs):
        warm = None
        if epoch == 0:
            warm = torch.optim.lr_scheduler.LinearLR(
                opt, start_factor=warmup_factor, total_iters=min(1000, iters - 1)
            )
        for i in range(iters):
            out[(epoch, i)] = opt.param_groups[0]["lr"]
            opt.step()
            if warm is not None:
                warm.step()
        main.step()
    return out


@pytest.mark.parametrize("iters", [2, 7, 30])
def test_lr_at_matches_torch_reference_schedulers(iters):
    base, steps, gamma, factor, epochs = 0.02, [2, 4], 0.1, 0.001, 6
    expected = reference_lrs(base, epochs, iters, steps, gamma, factor)
    warmup = resolve_warmup_iters(None, iters)
    for (epoch, i), lr in expected.items():
        assert lr_at(base, epoch, i, steps, gamma, warmup, factor) == pytest.approx(lr, rel=1e-9), (
            epoch,
            i,
        )


def test_warmup_resolution():
    assert resolve_warmup_iters(None, 5000) == 1000
    assert resolve_warmup_iters(None, 10) == 9
    assert resolve_warmup_iters(None, 1) == 0
    assert resolve_warmup_iters(37, 10) == 37


def test_shape_of_the_schedule():
    kw = dict(lr_steps=[16, 22], lr_gamma=0.1, warmup_iters=1000, warmup_factor=0.001)
    assert lr_at(0.02, 0, 0, **kw) == pytest.approx(0.02 * 0.001)
    assert lr_at(0.02, 0, 500, **kw) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert lr_at(0.02, 0, 1000, **kw) == pytest.approx(0.02)
    assert lr_at(0.02, 15, 0, **kw) == pytest.approx(0.02)
    assert lr_at(0.02, 16, 0, **kw) == pytest.approx(0.002)
    assert lr_at(0.02, 22, 0, **kw) == pytest.approx(0.0002)
    assert lr_at(0.02, 1, 0, **kw) == pytest.approx(0.02)  # warm-up only in epoch 0
