"""The objective against independent computations of the formulas in reference/meanflow.md."""
import pytest
import torch

from workbench.meanflow import TANGENTS, adaptive_weight, meanflow_loss

from conftest import mf, small_net

B = 16


def batch(shape=(2,), dtype=torch.float64):
    x = torch.randn(B, *shape, dtype=dtype)
    noise = torch.randn(B, *shape, dtype=dtype)
    a, b = torch.rand(B, dtype=dtype), torch.rand(B, dtype=dtype)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    r[: B // 4] = t[: B // 4]  # a quarter with r = t
    return x, t, r, noise


def finite_difference_dudt(net, z, r, t, tangent, labels=None, eps=1e-6):
    """Central difference of u(z + eps a v, r + eps b, t + eps c) in eps: an independent JVP."""
    v, dr, dt = tangent
    def u(e):
        return net(z + e * v, t + e * dt, r + e * dr, labels)
    return (u(eps) - u(-eps)) / (2 * eps)


def reference_loss(net, x, t, r, noise, p, c, tangent=(0.0, 1.0), labels=None):
    """loss = mean_i sg(w_i) ||u_i - sg(u_tgt_i)||^2, u_tgt = v - (t - r) dudt, written out from the paper."""
    tb = t.view(-1, *[1] * (x.dim() - 1))
    z = (1 - tb) * x + tb * noise
    v = noise - x
    dudt = finite_difference_dudt(net, z, r, t, (v, *tangent), labels)
    u_tgt = v - (t - r).view_as(tb) * dudt
    u = net(z, t, r, labels)
    sq = ((u - u_tgt) ** 2).reshape(B, -1).sum(1)
    return ((1.0 / (sq + c) ** p) * sq).mean()


@pytest.mark.parametrize("name", list(TANGENTS))
def test_loss_matches_independent_computation_for_each_tangent(name):
    """The tangent's (r, t) components read from its name '(v,dr,dt)' (not from the code's table), at p = 0 (plain
    squared error, where the four tangents' losses differ by far more than the tolerance)."""
    net = small_net()
    x, t, r, noise = batch()
    loss, _ = meanflow_loss(net, x, t, r, noise, mf(tangent=name, adaptive_p=0.0))
    dr, dt = (float(part) for part in name.strip("()").split(",")[1:])
    expected = reference_loss(net, x, t, r, noise, p=0.0, c=1e-3, tangent=(dr, dt))
    others = [reference_loss(net, x, t, r, noise, p=0.0, c=1e-3, tangent=TANGENTS[n]) for n in TANGENTS if n != name]
    assert torch.allclose(loss, expected, rtol=1e-7, atol=0)
    assert min(float(((other - expected) / expected).abs().detach()) for other in others) > 1e-4  # tangents told apart


@pytest.mark.parametrize("arch, shape", [("unet", (1, 8, 8)), ("dit", (1, 8, 8))])
def test_loss_matches_independent_computation_for_image_nets(arch, shape):
    net = small_net(arch, shape=shape)
    for param in net.parameters():  # DiT's adaLN-Zero starts at u = 0; randomize so the test can fail
        torch.nn.init.normal_(param, std=0.1)
    x, t, r, noise = batch(shape)
    loss, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.5, adaptive_c=1e-2))
    assert torch.allclose(loss, reference_loss(net, x, t, r, noise, p=0.5, c=1e-2), rtol=1e-6)


def test_target_is_stop_gradient_and_prediction_gets_gradients():
    net = small_net()
    x, t, r, noise = batch()
    loss, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.0))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    # Gradient of mean ||u - sg(u_tgt)||^2 computed with an explicitly detached target.
    net.zero_grad()
    z = (1 - t[:, None]) * x + t[:, None] * noise
    v = noise - x
    u_tgt = (v - (t - r)[:, None] * finite_difference_dudt(net, z, r, t, (v, 0.0, 1.0))).detach()
    ((net(z, t, r) - u_tgt) ** 2).sum(1).mean().backward()
    for n, p in net.named_parameters():
        assert torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-8), n


def flow_matching_loss(net, x, t, noise):
    tb = t[:, None]
    z = (1 - tb) * x + tb * noise
    return ((net(z, t, t) - (noise - x)) ** 2).sum(1).mean()


def test_ratio_zero_is_exactly_flow_matching():
    net = small_net()
    x, t, _, noise = batch()
    loss, metrics = meanflow_loss(net, x, t, t.clone(), noise, mf(ratio=0.0, adaptive_p=0.0))
    expected = flow_matching_loss(net, x, t, noise)
    assert torch.equal(loss, expected) or torch.allclose(loss, expected, rtol=1e-12)
    assert metrics["frac_r_neq_t"] == 0


def test_r_equal_t_samples_have_target_v():
    """Inside a mixed batch (JVP path) the r = t rows contribute exactly ||u - v||^2, for every tangent."""
    net = small_net()
    x, t, r, noise = batch()  # the first quarter has r = t
    fm, q = slice(0, B // 4), B // 4
    for name in TANGENTS:
        config = mf(tangent=name, adaptive_p=0.0)
        mixed, _ = meanflow_loss(net, x, t, r, noise, config)
        rest, _ = meanflow_loss(net, x[q:], t[q:], r[q:], noise[q:], config)
        fm_part = flow_matching_loss(net, x[fm], t[fm], noise[fm])
        assert torch.allclose(mixed * B, rest * (B - q) + fm_part * q, rtol=1e-10)


def test_all_r_equal_t_batch_takes_the_jvp_free_path_with_the_same_loss():
    net = small_net()
    x, t, _, noise = batch()
    r = t.clone()
    fast, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=1.0))
    r_tiny = t.clone()
    r_tiny[0] -= 1e-12  # one row with r != t sends the batch through the JVP; its (t - r) dudt is ~1e-12
    slow, metrics = meanflow_loss(net, x, t, r_tiny, noise, mf(adaptive_p=1.0))
    assert metrics["frac_r_neq_t"] == 1 / B
    assert torch.allclose(fast, slow, rtol=1e-8)


def test_adaptive_weight_p0_is_plain_sum_of_squares():
    net = small_net()
    x, t, r, noise = batch()
    loss, metrics = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.0))
    assert torch.allclose(loss, metrics["mse"], rtol=1e-12)
    assert metrics["weight_mean"] == 1.0


def test_adaptive_weight_p1_hand_computed():
    err = torch.tensor([3.0, 0.5, 0.0])
    w = adaptive_weight(err, p=1.0, c=1e-3)
    assert torch.allclose(w, torch.tensor([1 / 3.001, 1 / 0.501, 1 / 0.001]))
    # Weighted loss err / (err + c): 3/3.001 + 0.5/0.501 + 0 over 3.
    assert torch.isclose((w * err).mean(), torch.tensor((3 / 3.001 + 0.5 / 0.501) / 3))
    # A quartic port would give (err + c)^-2 weights: make sure p = 2 means exactly that and no more.
    assert torch.allclose(adaptive_weight(err, p=2.0, c=1e-3), 1 / (err + 1e-3) ** 2)


def test_adaptive_weight_is_stop_gradient():
    err = torch.tensor([2.0, 0.3], requires_grad=True)
    (adaptive_weight(err, 1.0, 0.01) * err).sum().backward()
    assert torch.allclose(err.grad, 1 / (err.detach() + 0.01))


def test_metrics_are_the_loss_its_parts_and_the_share_of_r_neq_t():
    net = small_net()
    x, t, r, noise = batch()
    loss, metrics = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=1.0, adaptive_c=1e-3))
    z = (1 - t[:, None]) * x + t[:, None] * noise
    err = (net(z, t, r) - (noise - x) + (t - r)[:, None] * finite_difference_dudt(net, z, r, t, (noise - x, 0.0, 1.0)))
    err = err.pow(2).sum(1)
    assert set(metrics) == {"loss", "mse", "weight_mean", "frac_r_neq_t"}
    assert metrics["loss"] == loss
    assert torch.allclose(metrics["mse"], err.mean(), rtol=1e-6)
    assert torch.allclose(metrics["weight_mean"], (1 / (err + 1e-3)).mean(), rtol=1e-6)
    assert metrics["frac_r_neq_t"] == 1 - (B // 4) / B


def test_given_rows_are_the_rows_whose_d_dt_u_enters_the_target():
    """train.py passes the r != t rows it drew on the CPU (so no step waits for the device): they are used as given."""
    net = small_net()
    x, t, r, noise = batch()
    config = mf(adaptive_p=0.0)
    rows = (r != t).nonzero().squeeze(1)
    assert torch.equal(meanflow_loss(net, x, t, r, noise, config, rows=rows)[0], meanflow_loss(net, x, t, r, noise, config)[0])
    z = (1 - t[:, None]) * x + t[:, None] * noise
    without = meanflow_loss(net, x, t, r, noise, config, rows=rows[:0])[0]  # no rows: d/dt u taken as 0
    assert torch.allclose(without, (net(z, t, r) - (noise - x)).pow(2).sum(1).mean(), rtol=1e-12)
