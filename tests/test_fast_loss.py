"""The fast ways of computing the MeanFlow loss ("tangent": ordinary forward for u plus a
gradient-free JVP on the r != t samples; "subset": one JVP for the r != t samples) equal the
whole-batch JVP loss (Eq. 10 as written): value and gradients, float64, random inputs, for every
ablation flag."""
from collections import deque

import pytest
import torch

from workbench.meanflow import JVP_MODES, TANGENTS, TIME_CONDITIONINGS, dudt, meanflow_loss
from workbench.meanflow.jvp import _SCALAR_ARITHMETIC, recorded_layer_outputs, time_derivative

from conftest import mf, small_net, torch_threads

B = 24


def inputs(fraction_r_neq_t: float, shape=(2,), classes=0):
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(B, *shape, generator=g, dtype=torch.float64), torch.randn(B, *shape, generator=g, dtype=torch.float64)
    a, b = torch.rand(B, generator=g, dtype=torch.float64), torch.rand(B, generator=g, dtype=torch.float64)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    same = torch.randperm(B, generator=g)[: round(B * (1 - fraction_r_neq_t))]  # scattered, not a prefix
    r[same] = t[same]
    labels = torch.randint(0, classes, (B,), generator=g) if classes else None
    dropped = torch.rand(B, generator=g) < 0.2 if classes else None
    return x, t, r, noise, labels, dropped


def loss_and_grads(net, config, batch, mode):
    net.zero_grad()
    x, t, r, noise, labels, dropped = batch
    loss, metrics = meanflow_loss(net, x, t, r, noise, config, labels=labels, dropped=dropped, dudt=JVP_MODES[mode])
    loss.backward()
    return loss.detach(), metrics, [p.grad.clone() for p in net.parameters()]


def assert_same(net, config, batch):
    with torch_threads(1):  # the reductions in one order: with more threads it moves with the thread count
        check_same(net, config, batch)


def check_same(net, config, batch):
    plain, plain_metrics, plain_grads = loss_and_grads(net, config, batch, "whole")
    for mode in ("tangent", "subset"):
        fast, fast_metrics, fast_grads = loss_and_grads(net, config, batch, mode)
        torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-14)
        for a, b in zip(fast_grads, plain_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for key in ("mse", "weight_mean", "frac_r_neq_t"):  # float64 sums of up to 1e12 (randomized DiT): order moves 1e-12
            torch.testing.assert_close(fast_metrics[key], plain_metrics[key], rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("tangent", list(TANGENTS))
def test_ratio_and_tangent(ratio, tangent):
    assert_same(small_net(), mf(ratio=ratio, tangent=tangent), inputs(ratio))


@pytest.mark.parametrize("time_cond", list(TIME_CONDITIONINGS))
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0])
def test_conditioning_and_adaptive_power(time_cond, p):
    assert_same(small_net(time_cond=time_cond), mf(adaptive_p=p), inputs(0.25))


@pytest.mark.parametrize("omega, kappa, interval", [(1.0, 0.0, (0.0, 1.0)), (2.0, 0.0, (0.0, 1.0)),
                                                    (0.4, 0.8, (0.0, 1.0)), (3.0, 0.5, (0.2, 0.7))])
def test_guidance(omega, kappa, interval):
    config = mf(cfg_omega=omega, cfg_kappa=kappa, cfg_t_lo=interval[0], cfg_t_hi=interval[1])
    assert_same(small_net(num_classes=3), config, inputs(0.25, classes=3))


def assert_close_to_scale(got, expected):
    """float64 agreement up to rounding: default-size networks with redrawn weights reach values of
    1e3 and more, where summation order alone moves the last ~8 digits."""
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12 * scale)


def randomized(net):
    """Every parameter redrawn: the DiT starts with zero output layers, whose d/dt u is 0 in any mode."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_image_networks_with_labels(arch):
    net = randomized(small_net(arch, num_classes=3, shape=(1, 8, 8)))
    assert_same(net, mf(cfg_omega=2.0, adaptive_p=1.0), inputs(0.25, shape=(1, 8, 8), classes=3))


@pytest.mark.parametrize("arch, shape", [("mlp", (2,)), ("unet", (1, 8, 8)), ("dit", (1, 8, 8))])
@pytest.mark.parametrize("tangent", list(TANGENTS))
def test_time_derivative_equals_torch_func_jvp(arch, shape, tangent):
    """The gradient-free JVP (plain weights in linear and conv layers) against torch.func.jvp."""
    net = randomized(small_net(arch, time_cond="(t,r)", num_classes=3, shape=shape))
    x, t, r, noise, labels, _ = inputs(1.0, shape=shape, classes=3)
    dr, dt = TANGENTS[tangent]
    _, expected = torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_, labels), (noise, t, r),
                                 (x, torch.full_like(t, dt), torch.full_like(r, dr)))
    assert expected.abs().max() > 1e-3  # a derivative worth comparing
    for _ in range(2):  # the second JVP skips the scalar-arithmetic mode if the first saw no such op (MLP)
        got = time_derivative(net, noise, t, r, x, labels, dr, dt)
        assert_close_to_scale(got, expected)
    assert _SCALAR_ARITHMETIC[net] == (arch != "mlp")  # 1 + scale (U-Net, DiT), attention scale (DiT)


@pytest.mark.parametrize("arch, shape", [("mlp", (2,)), ("unet", (1, 8, 8)), ("dit", (1, 8, 8))])
def test_time_derivative_reuses_the_forward_layer_outputs(arch, shape):
    """With the linear/conv outputs of an ordinary forward over a batch that holds the JVP's samples
    (scattered rows), the JVP equals torch.func.jvp, and it does take its primals from those
    outputs: shifting them shifts the result."""
    net = randomized(small_net(arch, num_classes=3, shape=shape))
    x, t, r, noise, labels, _ = inputs(1.0, shape=shape, classes=3)
    k = torch.tensor([3, 4, 11, 17, 20, 23])  # the JVP's samples in the batch
    with recorded_layer_outputs(net) as outputs:
        net(noise, t, r, labels)
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert set(outputs) == set(layers) and all(out.shape[0] == B for outs in outputs.values() for out in outs)
    _, expected = torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_, labels[k]), (noise[k], t[k], r[k]),
                                 (x[k], torch.ones_like(t[k]), torch.zeros_like(r[k])))
    got = time_derivative(net, noise[k], t[k], r[k], x[k], labels[k], 0.0, 1.0, outputs, rows=k)
    assert_close_to_scale(got, expected)
    assert not any(outputs.values())  # every recorded output was used
    with recorded_layer_outputs(net) as outputs:
        net(noise, t, r, labels)
    shifted = {layer: deque(out.detach() + 0.1 for out in outs) for layer, outs in outputs.items()}
    moved = time_derivative(net, noise[k], t[k], r[k], x[k], labels[k], 0.0, 1.0, shifted, rows=k)
    assert (moved - expected).abs().max() > 1e-3



def test_the_tangent_pass_runs_each_layer_once(monkeypatch):
    """"tangent" (what "auto" takes without dropout): one ordinary forward, whose linear outputs the JVP reuses,
    so each nn.Linear computes once per step, not twice."""
    net = randomized(small_net("mlp"))
    x, t, r, noise, _, _ = inputs(0.5)
    calls = []
    linear_forward = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, h: calls.append(self) or linear_forward(self, h))
    JVP_MODES["tangent"](net, noise, t, r, x, None, (0.0, 1.0))
    layers = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(map(id, calls)) == sorted(map(id, layers))

def test_time_derivative_ignores_outputs_of_other_layers():
    """Outputs recorded for another network's layers are not used as primals, and the layers'
    own forward is back after the JVP."""
    net, other = randomized(small_net("mlp")), small_net("mlp")
    x, t, r, noise, _, _ = inputs(1.0)
    with recorded_layer_outputs(other) as outputs:
        before = other(noise, t, r)
    _, expected = torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_), (noise, t, r), (x, torch.ones_like(t), torch.zeros_like(r)))
    got = time_derivative(net, noise, t, r, x, None, 0.0, 1.0, outputs, rows=torch.arange(B))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
    assert all("forward" not in vars(m) for m in net.modules())
    torch.testing.assert_close(other(noise, t, r), before)



class Offsets(torch.nn.Module):
    """A plain module with an integer buffer and an empty parameter slot beside a float parameter."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))
        self.register_buffer("order", torch.tensor([1, 0]))
        self.register_parameter("unused", None)

    def forward(self, h):
        return h[:, self.order] * self.scale


class WithOffsets(torch.nn.Module):
    num_classes = 0

    def __init__(self):
        super().__init__()
        self.offsets, self.linear = Offsets(), torch.nn.Linear(3, 2, dtype=torch.float64)

    def forward(self, z, t, r, labels=None):
        return self.offsets(self.linear(torch.cat([z, (t - r)[:, None]], 1)))


def test_time_derivative_leaves_integer_buffers_and_empty_slots_alone():
    net = WithOffsets()
    x, t, r, noise, _, _ = inputs(1.0)
    _, expected = torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_), (noise, t, r), (x, torch.ones_like(t), torch.zeros_like(r)))
    torch.testing.assert_close(time_derivative(net, noise, t, r, x, None, 0.0, 1.0), expected, rtol=1e-12, atol=1e-13)


def test_time_derivative_of_an_output_that_ignores_its_inputs_is_zero():
    net = lambda z, t, r, labels=None: torch.ones(len(z), 2, dtype=torch.float64)  # noqa: E731 (no dual in its output)
    x, t, r, noise, _, _ = inputs(1.0)
    got = time_derivative(net, noise, t, r, x, None, 0.0, 1.0)
    assert torch.equal(got, torch.zeros(len(noise), 2, dtype=torch.float64))


class GainNet(torch.nn.Module):
    """A per-sample keyword input that acts outside any layer: the JVP needs it, not only the recorded outputs."""

    num_classes = 0

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2, dtype=torch.float64)

    def forward(self, z, t, r, labels=None, gain=None):
        return torch.tanh(self.linear(torch.cat([z, (t - r)[:, None]], 1))) * (1 + gain[:, None] * t[:, None])


@pytest.mark.parametrize("mode", ["tangent", "subset", "whole", "auto"])
def test_every_strategy_hands_the_per_sample_inputs_to_the_jvp(mode):
    net = GainNet()
    x, t, r, noise, _, _ = inputs(0.5)
    gain = torch.linspace(-2.0, 3.0, B, dtype=torch.float64)
    z = (1 - t[:, None]) * x + t[:, None] * noise
    u, du_dt = JVP_MODES[mode](net, z, t, r, noise - x, None, (0.0, 1.0), cond={"gain": gain})
    expected_u, expected = torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_, gain=gain), (z, t, r),
                                          (noise - x, torch.ones_like(t), torch.zeros_like(r)))
    torch.testing.assert_close(u, expected_u, rtol=1e-12, atol=1e-13)
    if mode != "whole":  # the others skip the r = t rows, where the target's (t - r) d/dt u is 0 anyway
        expected = expected * (r != t)[:, None]
    torch.testing.assert_close(du_dt, expected, rtol=1e-12, atol=1e-13)

def test_time_derivative_under_bf16_autocast_stays_fp32():
    """Layer outputs recorded under bf16 autocast are not taken as primals of the fp32 JVP."""
    net = randomized(small_net("unet", shape=(1, 8, 8))).float()
    x, t, r, noise, _, _ = (a.float() if a is not None else None for a in inputs(1.0, shape=(1, 8, 8)))
    rows = torch.arange(B)
    with torch.autocast("cpu", dtype=torch.bfloat16), recorded_layer_outputs(net) as outputs:
        assert net(noise, t, r).dtype == torch.bfloat16
        got = time_derivative(net, noise, t, r, x, None, 0.0, 1.0, outputs, rows=rows)
    _, expected = torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_), (noise, t, r), (x, torch.ones_like(t), torch.zeros_like(r)))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_dropout_takes_one_pass_for_u_and_its_derivative():
    """With active dropout, two passes would draw two masks: "auto" must take the "subset" pass."""
    net = small_net("unet", shape=(1, 8, 8), dropout=0.5).train()
    x, t, r, noise, _, _ = inputs(0.25, shape=(1, 8, 8))
    losses = {}
    for mode in ("auto", "subset", "tangent"):
        torch.manual_seed(0)
        losses[mode], _ = meanflow_loss(net, x, t, r, noise, mf(), dudt=JVP_MODES[mode])
    assert losses["auto"] == losses["subset"] and losses["auto"] != losses["tangent"]
    torch.manual_seed(0)
    eval_loss, _ = meanflow_loss(net.eval(), x, t, r, noise, mf())  # no dropout at eval: "tangent" is exact
    torch.testing.assert_close(eval_loss, meanflow_loss(net, x, t, r, noise, mf(), dudt=JVP_MODES["whole"])[0])


@pytest.mark.parametrize("p,training,expected", [(0.5, True, "jvp_rows_only"), (0.0, True, "tangent_pass"),
                                                 (0.5, False, "tangent_pass")])
def test_auto_takes_one_pass_only_while_some_dropout_is_active(monkeypatch, p, training, expected):
    """Dropout with p = 0, or any dropout in eval mode, draws no mask: "auto" keeps the cheaper tangent pass."""
    taken = []
    for name in ("tangent_pass", "jvp_rows_only"):
        original = getattr(dudt, name)
        monkeypatch.setattr(dudt, name, lambda *args, name=name, original=original: taken.append(name) or original(*args))
    net = small_net("unet", shape=(1, 8, 8), dropout=p).train(training)
    x, t, r, noise, _, _ = inputs(0.25, shape=(1, 8, 8))
    meanflow_loss(net, x, t, r, noise, mf(), dudt=JVP_MODES["auto"])
    assert taken == [expected]

def test_official_cifar10_network_with_augmentation_labels():
    """The official CIFAR-10 network (reduced width; attention, FIR resampling) with its augmentation labels as
    extra inputs: every fast mode gives the whole-batch loss and gradients, and the labels reach the loss."""
    net = randomized(small_net("songunet", shape=(3, 8, 8), augment_dim=6, channels=16, channel_mult=(1, 2),
                               blocks=1, attn_resolutions=(4,), dropout=0.0))
    x, t, r, noise, _, _ = inputs(0.5, shape=(3, 8, 8))
    cond = {"augment_labels": torch.randn(B, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)}
    results = {}
    for mode in ("whole", "tangent", "subset", "auto"):
        net.zero_grad()
        loss, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.75), dudt=JVP_MODES[mode], cond=cond)
        loss.backward()
        results[mode] = loss.detach(), [p.grad.clone() for p in net.parameters()]
    for mode in ("tangent", "subset", "auto"):
        assert_close_to_scale(results[mode][0], results["whole"][0])
        for got, expected in zip(results[mode][1], results["whole"][1]):
            assert_close_to_scale(got, expected)
    unconditioned, _ = meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.75))
    assert (unconditioned - results["whole"][0]).abs() > 1e-6


@pytest.mark.parametrize("mode", ["tangent", "subset", "auto"])
def test_rows_known_on_the_cpu_give_the_same_loss(mode):
    """workbench/run/train.py passes the r != t rows found where t and r were drawn (no device sync): same loss and
    gradients as the strategies finding them from t and r."""
    net = small_net("unet", shape=(1, 8, 8), num_classes=3)
    batch = inputs(0.25, shape=(1, 8, 8), classes=3)
    x, t, r, noise, labels, dropped = batch
    expected, _, expected_grads = loss_and_grads(net, mf(), batch, mode)
    net.zero_grad()
    loss, _ = meanflow_loss(net, x, t, r, noise, mf(), labels=labels, dropped=dropped, dudt=JVP_MODES[mode],
                            rows=(r != t).nonzero().squeeze(1))
    loss.backward()
    assert torch.equal(loss.detach(), expected)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), expected_grads))


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_batches_all_r_equal_t_or_all_r_neq_t_keep_labels_and_augmentation_labels(fraction):
    """The strategies' shortcuts for a batch with no JVP row, or with only JVP rows, still pass the class labels
    and the augmentation labels to the network; and rows given by the caller are the rows used."""
    net = small_net("songunet", shape=(3, 8, 8), num_classes=3, augment_dim=6, channels=16, channel_mult=(1, 2),
                    blocks=1, attn_resolutions=(4,), dropout=0.0)
    torch.nn.init.normal_(net.out_conv.weight, std=0.1)
    x, t, r, noise, labels, dropped = inputs(fraction, shape=(3, 8, 8), classes=3)
    cond = {"augment_labels": torch.randn(B, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))}
    loss = lambda mode, **kw: meanflow_loss(net, x, t, r, noise, mf(adaptive_p=0.0), dudt=JVP_MODES[mode], **kw)[0]
    for mode in ("whole", "tangent", "subset"):
        full = loss(mode, labels=labels, cond=cond)
        torch.testing.assert_close(full, loss("whole", labels=labels, cond=cond), rtol=1e-12, atol=1e-14)
        assert (full - loss(mode, cond=cond)).abs() > 1e-8 and (full - loss(mode, labels=labels)).abs() > 1e-8
    if fraction == 1.0:
        z = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * noise
        no_dudt = (net(z, t, r, labels, **cond) - (noise - x)).pow(2).flatten(1).sum(1).mean()
        for mode in ("tangent", "subset"):  # no rows given as r != t: d/dt u is taken as 0 everywhere
            torch.testing.assert_close(loss(mode, labels=labels, cond=cond, rows=torch.arange(0)), no_dudt)


class NormsNet(torch.nn.Module):
    """Every norm layout the JVP handles: GroupNorm with and without affine, LayerNorm with and without."""

    num_classes = 0

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norms = torch.nn.ModuleList([torch.nn.GroupNorm(4, 8), torch.nn.GroupNorm(2, 8, affine=False)])
        self.layer_norms = torch.nn.ModuleList([torch.nn.LayerNorm(8), torch.nn.LayerNorm(8, elementwise_affine=False)])
        self.out = torch.nn.Conv2d(8, 1, 1)

    def forward(self, z, t, r, labels=None):
        h = self.inp(z.expand(-1, 3, -1, -1)) * (1 + t - 0.5 * r).view(-1, 1, 1, 1)
        for norm in self.norms:
            h = torch.tanh(norm(h))
        for norm in self.layer_norms:
            h = torch.tanh(norm(h.transpose(1, 3))).transpose(1, 3)
        return self.out(h)


def test_time_derivative_through_group_and_layer_norms_with_and_without_affine():
    net = randomized(NormsNet().double())
    for norm in [*net.norms, *net.layer_norms]:
        if norm.weight is not None:
            torch.nn.init.normal_(norm.weight)
            torch.nn.init.normal_(norm.bias)
    x, t, r, noise, _, _ = inputs(1.0, shape=(1, 8, 8))
    _, expected = torch.func.jvp(lambda z_, t_, r_: net(z_, t_, r_), (noise, t, r), (x, torch.ones_like(t), torch.zeros_like(r)))
    assert expected.abs().max() > 1e-3
    assert_close_to_scale(time_derivative(net, noise, t, r, x, None, 0.0, 1.0), expected)
