"""Every network x every time conditioning: forward, JVP and backward run; shapes hold."""
import pytest
import torch
from torch.func import jvp

from workbench.meanflow import NETWORKS, TIME_CONDITIONINGS

from conftest import small_net

SHAPES = {"mlp": (2,), "unet": (1, 8, 8), "dit": (3, 8, 8)}


@pytest.mark.parametrize("arch", list(NETWORKS))
@pytest.mark.parametrize("time_cond", list(TIME_CONDITIONINGS))
@pytest.mark.parametrize("num_classes", [0, 4])
def test_forward_jvp_backward(arch, time_cond, num_classes):
    shape = SHAPES[arch]
    net = small_net(arch, time_cond, num_classes, shape, dtype=torch.float32)
    z = torch.randn(3, *shape)
    t, r = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.1, 0.5, 0.0])
    labels = torch.tensor([0, 4, 2]) if num_classes else None
    u, dudt = jvp(lambda z_, r_, t_: net(z_, t_, r_, labels), (z, r, t), (torch.randn_like(z), torch.zeros(3), torch.ones(3)))
    assert u.shape == dudt.shape == z.shape
    (u - 1).square().sum().backward()  # not u^2: DiT starts at u = 0 (adaLN-Zero)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("time_cond", list(TIME_CONDITIONINGS))
def test_time_conditioning_sees_only_its_inputs(time_cond):
    """'t-r' must not depend on t given t - r; '(t,r)' variants must depend on t."""
    torch.manual_seed(0)
    net = small_net("mlp", time_cond, dtype=torch.float64)
    z = torch.randn(4, 2, dtype=torch.float64)
    a = net(z, torch.full((4,), 0.8, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64))
    b = net(z, torch.full((4,), 0.6, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64))
    assert torch.allclose(a, b) == (time_cond == "t-r")


def test_image_net_rejects_indivisible_shapes():
    with pytest.raises(ValueError, match="divisible"):
        small_net("unet", shape=(1, 6, 6), channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible"):
        small_net("dit", shape=(1, 7, 7), patch_size=2)
