"""The official CIFAR-10 augmentation (EDM's AugmentPipe as MeanFlow's code enables it): each transform's
rate, the label encoding, the geometry of a known transform, and identity when nothing is drawn."""
import math

import pytest
import torch

from workbench.run.augment import AUGMENT_DIM, apply_augment, augment_labels, draw_augment


def smooth_images(n: int = 4, size: int = 32) -> torch.Tensor:
    """Low-frequency images in [-1, 1]: resampling them is accurate away from the border."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).clamp(-1, 1)


def test_each_transform_is_drawn_at_its_rate():
    n, p = 40_000, 0.12
    params = draw_augment(n, p, torch.Generator().manual_seed(0))
    xflip, scale, aniso, angle, tx, ty = params.unbind(1)
    sd = 4 * math.sqrt(p * (1 - p) / n)  # 4 standard errors of a rate
    assert set(xflip.unique().tolist()) == {0.0, 1.0} and abs(xflip.mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    for w in (scale, aniso, tx):
        assert abs((w != 0).double().mean() - p) < sd
    assert torch.equal(tx != 0, ty != 0)  # one draw decides both translation components
    rotated = (angle[aniso != 0] != 0).double()  # the aniso axis is turned on half of the aniso draws
    assert abs(rotated.mean() - 0.5) < 4 * math.sqrt(0.25 / len(rotated)) and angle.abs().max() <= math.pi
    assert not angle[aniso == 0].any()
    assert abs(scale[scale != 0].std() - 1) < 0.05  # log2 scale = 0.2 * N(0, 1)
    assert ((scale != 0) & (aniso != 0)).double().mean() == pytest.approx(p * p, abs=sd)  # independent


def test_nothing_is_drawn_at_p_zero_and_zero_parameters_leave_the_image():
    params = draw_augment(64, 0.0, torch.Generator().manual_seed(0))
    assert params.shape == (64, AUGMENT_DIM) and not params.any()
    x = smooth_images()
    y, labels = apply_augment(x, params[:4])
    assert not labels.any()
    torch.testing.assert_close(y, x, rtol=0, atol=2e-5)  # the symlet up/down filtering alone


def test_label_encoding():
    params = torch.tensor([[1.0, 0.5, 2.0, math.pi / 3, -0.25, 0.75]], dtype=torch.float64)
    expected = torch.tensor([[1.0, 0.5, 2.0 * 0.5, 2.0 * math.sqrt(3) / 2, -0.25, 0.75]])
    torch.testing.assert_close(augment_labels(params), expected)


def test_flip_and_translation_move_pixels_as_labelled():
    x = smooth_images()
    flip = torch.tensor([[1.0, 0, 0, 0, 0, 0]], dtype=torch.float64).expand(4, 6)
    torch.testing.assert_close(apply_augment(x, flip)[0], x.flip(3), rtol=0, atol=2e-5)
    # tx = 0.25 of the 0.125 * 32 pixel std: 1 pixel to the right, ty = -0.5: 2 pixels up
    shift = torch.tensor([[0, 0, 0, 0, 0.25, -0.5]], dtype=torch.float64).expand(4, 6)
    y, labels = apply_augment(x, shift)
    torch.testing.assert_close(y[:, :, 4:26, 5:28], x[:, :, 6:28, 4:27], rtol=0, atol=1e-4)
    assert torch.equal(labels[0], torch.tensor([0, 0, 0, 0, 0.25, -0.5]))


def test_isotropic_scale_zooms_about_the_centre():
    """scale w = 5: 2^(0.2 * 5) = 2x zoom; the centre pixel pair stays, a pixel 4 from the centre comes from 2."""
    size = 32
    x = smooth_images(size=size)
    y, _ = apply_augment(x, torch.tensor([[0, 5.0, 0, 0, 0, 0]], dtype=torch.float64).expand(4, 6))
    coords = torch.arange(size) - (size - 1) / 2
    expected = torch.nn.functional.grid_sample(x, torch.stack(torch.meshgrid(coords / 2 / (size / 2), coords / 2 / (size / 2),
                                                                             indexing="xy"), -1).expand(4, -1, -1, -1),
                                               mode="bicubic", align_corners=False)
    torch.testing.assert_close(y[:, :, 8:24, 8:24], expected[:, :, 8:24, 8:24], rtol=0, atol=0.02)
