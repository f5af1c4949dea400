"""Classifier-free guidance in training (Eq. 13 / 19) and class dropout."""
import torch

from workbench.meanflow import guided_velocity, meanflow_loss

from conftest import mf, small_net

B, K = 12, 3


class TableNet(torch.nn.Module):
    """u(z, t, r | c) = a fixed vector per class (null = K): makes guided targets hand-computable."""

    def __init__(self, table):
        super().__init__()
        self.num_classes = K
        self.table = table  # (K + 1, 2)
        self.calls = []

    def forward(self, z, t, r, labels=None):
        self.calls.append(labels)
        return self.table[labels] + 0 * z


def inputs():
    z, v = torch.randn(B, 2, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    t = torch.rand(B, dtype=torch.float64)
    labels = torch.randint(0, K, (B,))
    return z, t, v, labels


def test_w1_kappa0_is_the_unguided_target():
    z, t, v, labels = inputs()
    net = small_net(num_classes=K)
    assert torch.equal(guided_velocity(net, z, t, v, labels, None, mf(cfg_omega=1.0, cfg_kappa=0.0)), v)


def test_kappa_form():
    z, t, v, labels = inputs()
    table = torch.randn(K + 1, 2, dtype=torch.float64)
    w, kappa = 2.5, 0.4
    out = guided_velocity(TableNet(table), z, t, v, labels, None, mf(cfg_omega=w, cfg_kappa=kappa))
    expected = w * v + kappa * table[labels] + (1 - w - kappa) * table[K]
    assert torch.allclose(out, expected)


def test_effective_scale_is_w_over_one_minus_kappa():
    """If u(.|c) already equals its own guided target, u(.|c) = w' v + (1 - w') u(.|null), w' = w / (1 - kappa)."""
    z, t, v, labels = inputs()
    v = torch.ones(B, 2, dtype=torch.float64) * torch.tensor([0.3, -1.2], dtype=torch.float64)  # one v per batch
    w, kappa = 1.8, 0.1
    w_eff = w / (1 - kappa)
    table = torch.zeros(K + 1, 2, dtype=torch.float64)
    table[K] = torch.tensor([0.7, 0.2])
    table[:K] = w_eff * v[0] + (1 - w_eff) * table[K]  # the fixed point for every class
    out = guided_velocity(TableNet(table), z, t, v, labels, None, mf(cfg_omega=w, cfg_kappa=kappa))
    assert torch.allclose(out, table[labels])


def test_guidance_only_inside_interval():
    z, t, v, labels = inputs()
    t = torch.linspace(0, 1, B, dtype=torch.float64)
    table = torch.randn(K + 1, 2, dtype=torch.float64)
    out = guided_velocity(TableNet(table), z, t, v, labels, None, mf(cfg_omega=3.0, cfg_t_lo=0.3, cfg_t_hi=0.7))
    inside = (t >= 0.3) & (t <= 0.7)
    assert torch.equal(out[~inside], v[~inside])
    assert torch.allclose(out[inside], 3.0 * v[inside] - 2.0 * table[K])


def test_dropped_samples_use_null_class_and_v():
    x, noise = torch.randn(B, 2, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    t = torch.rand(B, dtype=torch.float64)
    r = t * 0.5
    labels = torch.randint(0, K, (B,))
    dropped = torch.arange(B) % 3 == 0
    net = small_net(num_classes=K)
    config = mf(cfg_omega=2.0, adaptive_p=0.0)
    loss_drop, _ = meanflow_loss(net, x, t, r, noise, config, labels=labels, dropped=dropped)
    # Independent: dropped rows computed as unconditional, unguided; kept rows with guidance.
    null = torch.full_like(labels, K)
    loss_null, _ = meanflow_loss(net, x[dropped], t[dropped], r[dropped], noise[dropped], mf(adaptive_p=0.0),
                                 labels=null[dropped])
    loss_kept, _ = meanflow_loss(net, x[~dropped], t[~dropped], r[~dropped], noise[~dropped], config, labels=labels[~dropped])
    n = int(dropped.sum())
    assert torch.allclose(loss_drop, (n * loss_null + (B - n) * loss_kept) / B, rtol=1e-10)

    recorder = TableNet(torch.zeros(K + 1, 2, dtype=torch.float64))
    meanflow_loss(recorder, x, t, r, noise, config, labels=labels, dropped=dropped)
    jvp_labels = recorder.calls[-1]
    assert bool((jvp_labels[dropped] == K).all()) and torch.equal(jvp_labels[~dropped], labels[~dropped])


def test_no_guidance_without_labels_or_at_w1_kappa0_and_no_forward_pass_spent():
    z, t, v, labels = inputs()
    net = TableNet(torch.randn(K + 1, 2, dtype=torch.float64))
    assert torch.equal(guided_velocity(net, z, t, v, None, None, mf(cfg_omega=2.0)), v)  # unconditional data
    assert torch.equal(guided_velocity(net, z, t, v, labels, None, mf(cfg_omega=1.0, cfg_kappa=0.0)), v)
    assert net.calls == []


def test_kappa_alone_guides():
    """w = 1, kappa = 0.5: v~ = v + 0.5 u(c) - 0.5 u(null), not v."""
    z, t, v, labels = inputs()
    table = torch.randn(K + 1, 2, dtype=torch.float64)
    out = guided_velocity(TableNet(table), z, t, v, labels, None, mf(cfg_omega=1.0, cfg_kappa=0.5))
    assert torch.allclose(out, v + 0.5 * table[labels] - 0.5 * table[K], rtol=1e-12)


class AugmentedTableNet(TableNet):
    """TableNet plus the first two augmentation labels: u depends on cond, not on z, t or r (d/dt u = 0)."""

    def forward(self, z, t, r, labels=None, augment_labels=None):
        return super().forward(z, t, r, labels) + augment_labels[:, :2]


def test_guided_loss_passes_the_augmentation_labels_to_every_forward():
    from workbench.meanflow.dudt import whole_batch

    x, e = torch.randn(B, 2, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    t = torch.rand(B, dtype=torch.float64)
    labels, aug = torch.randint(0, K, (B,)), torch.randn(B, 6, dtype=torch.float64)
    table = torch.randn(K + 1, 2, dtype=torch.float64)
    w, kappa = 2.0, 0.3
    loss, _ = meanflow_loss(AugmentedTableNet(table), x, t, 0.5 * t, e, mf(cfg_omega=w, cfg_kappa=kappa, adaptive_p=0.0),
                            labels=labels, dudt=whole_batch, cond={"augment_labels": aug})
    u, u_null = table[labels] + aug[:, :2], table[K] + aug[:, :2]
    v_tilde = w * (e - x) + kappa * u + (1 - w - kappa) * u_null  # the target, as d/dt u = 0
    assert torch.allclose(loss, (u - v_tilde).pow(2).sum(1).mean(), rtol=1e-12)


def test_interval_ends_are_guided_and_kappa_zero_spends_one_forward_pass():
    z, _, v, labels = inputs()
    t = torch.tensor([0.25, 0.75, 0.2, 0.8] * (B // 4), dtype=torch.float64)  # the ends and just outside
    table = torch.randn(K + 1, 2, dtype=torch.float64)
    net = TableNet(table)
    out = guided_velocity(net, z, t, v, labels, None, mf(cfg_omega=3.0, cfg_t_lo=0.25, cfg_t_hi=0.75))
    inside = (t == 0.25) | (t == 0.75)
    assert torch.allclose(out[inside], 3.0 * v[inside] - 2.0 * table[K], rtol=1e-12)
    assert torch.equal(out[~inside], v[~inside])
    assert len(net.calls) == 1  # u(z, t, t | null) only: kappa = 0 needs no u(z, t, t | c)
