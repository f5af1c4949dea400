"""Every network x every time conditioning: forward, JVP and backward run; shapes hold."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import jvp

from workbench.meanflow import NETWORKS, TIME_CONDITIONINGS

from conftest import numpy_weights, small_net

SHAPES = {"mlp": (2,), "unet": (1, 8, 8), "songunet": (3, 8, 8), "dit": (3, 8, 8)}
# the official CIFAR-10 network at a width that runs in a test: two levels, attention at 4x4 and in the middle
SMALL = {"songunet": dict(channels=16, channel_mult=(1, 2), blocks=1, attn_resolutions=(4,), dropout=0.0)}


@pytest.mark.parametrize("arch", list(NETWORKS))
@pytest.mark.parametrize("time_cond", list(TIME_CONDITIONINGS))
@pytest.mark.parametrize("num_classes", [0, 4])
def test_forward_jvp_backward(arch, time_cond, num_classes):
    shape = SHAPES[arch]
    net = small_net(arch, time_cond, num_classes, shape, dtype=torch.float32, **SMALL.get(arch, {}))
    z = torch.randn(3, *shape)
    t, r = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.1, 0.5, 0.0])
    labels = torch.tensor([0, 4, 2]) if num_classes else None
    u, dudt = jvp(lambda z_, r_, t_: net(z_, t_, r_, labels), (z, r, t), (torch.randn_like(z), torch.zeros(3), torch.ones(3)))
    assert u.shape == dudt.shape == z.shape
    (u - 1).square().sum().backward()  # not u^2: DiT starts at u = 0 (adaLN-Zero)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# Which moves of (t, r) each conditioning must see: r with t fixed, t with r fixed, t with t - r fixed.
SEES = {"(t,r)": (True, True, True), "(t,t-r)": (True, True, True), "(t,r,t-r)": (True, True, True),
        "t-r": (True, True, False)}


@pytest.mark.parametrize("arch", list(NETWORKS))
@pytest.mark.parametrize("time_cond", list(TIME_CONDITIONINGS))
def test_time_conditioning_depends_on_each_of_its_inputs(arch, time_cond):
    """Move r with t fixed, t with r fixed, and t with t - r fixed: u changes exactly when the conditioning
    sees the move ('t-r' alone does not see t when t - r is held). An embedding that dropped r, or swapped
    (t, r), fails here."""
    torch.manual_seed(0)
    shape = SHAPES[arch]
    net = small_net(arch, time_cond, shape=shape, dtype=torch.float64, **SMALL.get(arch, {}))
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised outputs (DiT's adaLN-Zero, SongUNet's 1e-5 convs) hide inputs
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(4, *shape, dtype=torch.float64)
    t, r = torch.full((4,), 0.8, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    base = net(z, t, r)
    moves = (net(z, t, r - 0.2), net(z, t - 0.1, r), net(z, t - 0.1, r - 0.1))
    assert tuple(not torch.allclose(base, moved, rtol=0, atol=1e-9) for moved in moves) == SEES[time_cond]


def test_image_net_rejects_indivisible_shapes():
    """Each message names the network, the rule and the shape; height and width are each checked."""
    unet = "U-Net with channel_mult=(1, 2, 2) needs H, W divisible by 4, got "
    cases = [("unet", (1, 6, 6), {"channel_mult": (1, 2, 2)}, unet + "6x6"),
             ("unet", (1, 8, 6), {"channel_mult": (1, 2, 2)}, unet + "8x6"),
             ("unet", (1, 6, 8), {"channel_mult": (1, 2, 2)}, unet + "6x8"),
             ("songunet", (3, 8, 4), {}, "SongUNet needs square images divisible by 2^1, got 8x4"),
             ("songunet", (3, 6, 6), {"channel_mult": (1, 2, 2)}, "SongUNet needs square images divisible by 2^2, got 6x6"),
             ("dit", (1, 7, 8), {"patch_size": 2}, "DiT: 7x8 not divisible by patch 2, or hidden 128 by heads 4"),
             ("dit", (1, 8, 7), {"patch_size": 2}, "DiT: 8x7 not divisible by patch 2, or hidden 128 by heads 4"),
             ("dit", (1, 8, 8), {"patch_size": 2, "hidden": 30}, "DiT: 8x8 not divisible by patch 2, or hidden 30 by heads 4")]
    small_net("songunet", shape=(3, 4, 4), **(SMALL["songunet"] | {"channel_mult": (1, 2, 2), "attn_resolutions": ()}))
    for arch, shape, options, message in cases:
        with pytest.raises(ValueError) as error:
            small_net(arch, shape=shape, **(SMALL.get(arch, {}) | options))
        assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        small_net("mlp", time_cond="(t,s)")
    assert str(error.value) == f"time_cond '(t,s)' not in {sorted(TIME_CONDITIONINGS)}"


def test_official_cifar10_network_has_the_official_parameter_count():
    """Gsunshine/py-meanflow's SongUNet with its CIFAR-10 config and --use_edm_aug (augment_dim 6): 55,932,419
    parameters (counted by instantiating that code); without the augmentation input 6 x 512 fewer."""
    count = lambda net: sum(p.numel() for p in net.parameters())
    official = small_net("songunet", shape=(3, 32, 32), dtype=torch.float32, augment_dim=6)
    assert count(official) == 55_932_419
    assert count(small_net("songunet", shape=(3, 32, 32), dtype=torch.float32)) == 55_932_419 - 6 * 512
    blocks = [m for m in official.modules() if type(m).__name__ == "Block"]
    assert len(blocks) == 3 * 4 + 2 + 2 + 2 + 3 * 5  # encoder 3 x 4, 2 downsampling, middle 2, 2 upsampling, decoder 3 x 5
    assert sum(b.attention for b in blocks) == 4 + 1 + 1  # encoder at 16x16, the middle block, decoder's last at 16x16
    assert all(n.eps == 1e-6 and n.num_groups == 32 for n in official.modules() if isinstance(n, torch.nn.GroupNorm))


def test_songunet_sees_the_augmentation_labels_and_zeros_mean_none():
    torch.manual_seed(0)
    net = small_net("songunet", shape=(3, 8, 8), augment_dim=6, **SMALL["songunet"])
    torch.nn.init.normal_(net.out_conv.weight)  # the official near-zero last conv would hide every input
    z, t, r = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.9, 0.4]), torch.tensor([0.2, 0.4])
    t, r = t.double(), r.double()
    plain = net(z, t, r)
    assert torch.equal(plain, net(z, t, r, augment_labels=torch.zeros(2, 6, dtype=torch.float64)))
    assert not torch.allclose(plain, net(z, t, r, augment_labels=torch.ones(2, 6, dtype=torch.float64)))
    assert not torch.allclose(plain, net(z, t, r - 0.1))  # (t, t - r): moving r moves u


def test_dit_b4_is_built_and_initialised_as_the_official_code():
    """Gsunshine/meanflow models_dit.py: DiT-B/4 on 32x32x4 latents, 1000 classes, embedders of t and t - r with
    256 frequencies, fixed sin-cos positions: 131,165,248 parameters; N(0, 0.02) time-MLP and label weights,
    xavier-uniform attention / MLP / patch projections (fan-in C p^2), zero biases and zero adaLN and output."""
    torch.manual_seed(0)
    net = small_net("dit", num_classes=1000, shape=(4, 32, 32), dtype=torch.float32, hidden=768, depth=12, heads=12,
                    patch_size=4)
    assert sum(p.numel() for p in net.parameters()) == 131_165_248
    assert "pos" not in dict(net.named_parameters()) and net.pos.shape == (1, 64, 768)
    for embedder in net.cond.embedders:
        assert embedder.mlp[0].in_features == 256 and abs(embedder.mlp[0].weight.std() - 0.02) < 1e-3
    assert abs(net.cond.label_embedding.weight.std() - 0.02) < 1e-3
    qkv = net.blocks[0].attn.qkv.weight
    assert abs(qkv.abs().max() - math.sqrt(6 / (768 + 3 * 768))) < 1e-3 and not net.blocks[0].attn.qkv.bias.any()
    patch = net.patchify.weight
    assert abs(patch.abs().max() - math.sqrt(6 / (4 * 16 + 768))) < 2e-3
    for zero in (net.blocks[3].adaLN[-1].weight, net.final_adaLN[-1].weight, net.final.weight, net.final.bias):
        assert not zero.any()


def test_dit_positions_are_2d_sin_cos_columns_then_rows():
    from workbench.meanflow.dit import sincos_positions

    pos = sincos_positions(8, 3, 3).double()  # dim 8: per axis 4 = [sin(w0 x), sin(w1 x), cos(w0 x), cos(w1 x)]
    col, row = 2, 1  # patch 5 in row-major order
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
                math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    torch.testing.assert_close(pos[row * 3 + col], torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7)


def test_songunet_computes_the_official_networks_function():
    """tests/data/songunet_official_output.npz holds the output of the official SongUNet (Gsunshine/py-meanflow
    models/unet.py, DDPM++ as MeanFlow configures it: channel_mult_noise 2, filter [1, 3, 3, 1]) at the small
    test size, in float64, every parameter drawn from numpy's N(0, 0.2^2) in the module's parameter order (the
    script that wrote it ran that code; the workbench does not ship it). The same draws in the same order here
    must give the same function: time embedding, attention scale, skip scaling, resampling filters, all of it."""
    net = small_net("songunet", shape=(3, 8, 8), augment_dim=6, **SMALL["songunet"])
    rng = np.random.default_rng(0)
    numpy_weights(net, rng, 0.2)
    net.eval()
    z = torch.from_numpy(rng.standard_normal((3, 3, 8, 8)))
    t, r = torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64), torch.tensor([0.2, 0.5, 0.0], dtype=torch.float64)
    aug = torch.from_numpy(rng.standard_normal((3, 6)))
    with np.load(Path(__file__).parent / "data" / "songunet_official_output.npz") as official:
        np.testing.assert_allclose(net(z, t, r, augment_labels=aug).detach().numpy(), official["with_augment"], atol=1e-10)
        np.testing.assert_allclose(net(z, t, r).detach().numpy(), official["without_augment"], atol=1e-10)


def test_songunet_without_labels_is_the_null_class():
    net = small_net("songunet", num_classes=3, shape=(3, 8, 8), **SMALL["songunet"])
    torch.nn.init.normal_(net.out_conv.weight)
    torch.nn.init.normal_(net.map_label.weight)
    z, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.9, 0.4], dtype=torch.float64)
    null = net(z, t, 0.5 * t, torch.full((2,), 3))
    assert torch.equal(net(z, t, 0.5 * t), null) and net.map_label.num_embeddings == 4  # 3 classes and the null class
    assert not torch.allclose(net(z, t, 0.5 * t, torch.zeros(2, dtype=torch.long)), null)


def test_songunet_adds_the_class_embedding_where_it_adds_the_augmentation_labels():
    """Class labels are an extension (the official CIFAR-10 network has none): their embedding is added to the
    time features beside the augmentation labels', so a class embedding v acts as augmentation labels mapped to v."""
    net = small_net("songunet", num_classes=3, shape=(3, 8, 8), augment_dim=6, **SMALL["songunet"])
    torch.nn.init.normal_(net.out_conv.weight)
    v = torch.randn(net.map_label.weight.shape[1], dtype=torch.float64)
    z, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.9, 0.4], dtype=torch.float64)
    one_hot = torch.zeros(2, 6, dtype=torch.float64)
    one_hot[:, 0] = 1
    with torch.no_grad():
        net.map_label.weight[1] = v
        net.map_label.weight[2] = 0
        net.map_augment.weight[:, 0] = v
    by_class = net(z, t, 0.5 * t, torch.ones(2, dtype=torch.long), augment_labels=0 * one_hot)
    by_augment = net(z, t, 0.5 * t, torch.full((2,), 2), augment_labels=one_hot)
    assert torch.allclose(by_class, by_augment, rtol=1e-12, atol=1e-12)
    assert torch.equal(net(z, t, 0.5 * t, torch.full((2,), 2), augment_labels=one_hot.float()), by_augment)  # any dtype


def test_dit_attention_is_multi_head_attention():
    from workbench.meanflow.dit import Attention

    attn, reference = Attention(24, 3).double(), torch.nn.MultiheadAttention(24, 3, batch_first=True).double()
    with torch.no_grad():
        reference.in_proj_weight.copy_(attn.qkv.weight)
        reference.in_proj_bias.copy_(attn.qkv.bias)
        reference.out_proj.weight.copy_(attn.proj.weight)
        reference.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    torch.testing.assert_close(attn(x), reference(x, x, x, need_weights=False)[0], rtol=1e-12, atol=1e-12)


def test_dit_block_is_adaln_zero_written_out():
    """x + g1 attn(LN(x)(1 + s1) + b1), then + g2 mlp(LN(x)(1 + s2) + b2), (b, s, g) from adaLN(c), once non-zero."""
    from workbench.meanflow.dit import DiTBlock

    block = DiTBlock(24, 3).double()
    torch.nn.init.normal_(block.adaLN[-1].weight, std=0.5)
    torch.nn.init.normal_(block.adaLN[-1].bias, std=0.5)
    x, c = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 24, dtype=torch.float64)
    b1, s1, g1, b2, s2, g2 = (p[:, None] for p in block.adaLN[-1](torch.nn.functional.silu(c)).chunk(6, dim=1))
    norm = lambda y: torch.nn.functional.layer_norm(y, (24,), eps=1e-6)
    x1 = x + g1 * block.attn(norm(x) * (1 + s1) + b1)
    expected = x1 + g2 * block.mlp(norm(x1) * (1 + s2) + b2)
    torch.testing.assert_close(block(x, c), expected, rtol=1e-12, atol=1e-12)


def test_songunet_is_initialised_as_edm():
    """EDM's weight_init('xavier_uniform') times init_weight: 1e-5 for each block's second conv, its attention
    projection and the output conv, sqrt(0.2) for the attention's qkv, 1 elsewhere; zero biases. The largest of
    many uniform draws on [-bound, bound] lies just below the bound."""
    net = small_net("songunet", shape=(3, 8, 8), augment_dim=6, num_classes=3, dtype=torch.float32, **SMALL["songunet"])
    gains = {"conv1": 1e-5, "proj": 1e-5, "out_conv": 1e-5, "qkv": math.sqrt(0.2)}
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 48
    for name, layer in layers:
        fan_in = layer.weight[0].numel()
        fan_out = layer.weight.shape[0] * (layer.weight[0, 0].numel() if layer.weight.dim() == 4 else 1)
        bound = gains.get(name.split(".")[-1], 1.0) * math.sqrt(6 / (fan_in + fan_out))
        assert 0.8 * bound < layer.weight.abs().max() <= bound, name
        assert layer.bias is None or not layer.bias.any(), name
    assert net.map_augment.bias is None
    assert not any("freqs" in k or "filter" in k for k in net.state_dict())  # fixed buffers, rebuilt with the net


@pytest.mark.parametrize("arch", ["mlp", "unet", "dit"])
@pytest.mark.parametrize("time_cond", ["(t,t-r)", "(t,r)"])
def test_networks_are_a_fixed_function(arch, time_cond):
    """The committed CPU studies were measured with the MLP and U-Net, and the DiT is the official ImageNet
    network rewritten from JAX: with numpy-drawn weights their outputs equal those stored in tests/data at commit
    df87d24 (an architecture change shows here, not only in the reports), within 1e-6 of the output's scale: the
    float32 sinusoidal time features round differently on another CPU's vector units (measured: up to 2.4e-8 of the
    scale on an AVX-512 machine against the stored values), an architecture change by far more."""
    shape = SHAPES[arch]
    net = small_net(arch, time_cond=time_cond, num_classes=3, shape=shape)
    rng = np.random.default_rng(0)
    numpy_weights(net, rng, 0.3)
    z = torch.from_numpy(rng.standard_normal((4, *shape)))
    t, r = torch.tensor([0.9, 0.6, 0.3, 0.1], dtype=torch.float64), torch.tensor([0.2, 0.6, 0.0, 0.05], dtype=torch.float64)
    with np.load(Path(__file__).parent / "data" / "cpu_networks_function.npz") as stored:
        expected = stored[f"{arch} {time_cond}"]
    out = net.eval()(z, t, r, torch.tensor([0, 1, 2, 3])).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_in_plain_ops_is_torchs_group_norm(affine):
    """What SongUNet's GroupNorm computes under torch.compile equals the fused kernel it runs eagerly."""
    from workbench.meanflow.norms import GroupNorm

    norm = GroupNorm(4, 8, eps=1e-6, affine=affine).double()
    if affine:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = 3 + 2 * torch.randn(3, 8, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(norm.plain_ops(x), torch.nn.functional.group_norm(
        x, 4, norm.weight if affine else None, norm.bias if affine else None, 1e-6), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm(x), norm.plain_ops(x), rtol=1e-12, atol=1e-12)


def test_details_the_official_networks_fix():
    """DiT: LayerNorms with eps 1e-6 and positions recomputed, not saved in checkpoints (nor are the time
    embedding's frequencies); the U-Net: every level's
    blocks chain their widths (two blocks per level build and run), and four levels need sizes divisible by 8."""
    dit = small_net("dit", shape=(1, 8, 8), patch_size=2, hidden=32, depth=1, heads=2)
    assert {m.eps for m in dit.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    assert "pos" not in dit.state_dict()
    assert not [key for key in small_net("mlp").state_dict() if "freqs" in key]  # time frequencies: recomputed too
    unconditional, conditional = small_net("mlp"), small_net("mlp", num_classes=3)
    assert unconditional.cond.label_embedding is None  # no class, no class embedding (and no parameters for one)
    z, t = torch.randn(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    assert torch.equal(conditional(z, t, t), conditional(z, t, t, torch.full((4,), 3)))  # no labels: the null class
    unet = small_net("unet", shape=(1, 8, 8), channels=8, channel_mult=(1, 2), blocks=2)
    z = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert unet(z, torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)).shape == z.shape
    with pytest.raises(ValueError) as error:
        small_net("unet", shape=(1, 12, 12), channels=8, channel_mult=(1, 2, 2, 2), blocks=1)
    assert str(error.value) == "U-Net with channel_mult=(1, 2, 2, 2) needs H, W divisible by 8, got 12x12"
