"""Data sets ship with the install or fail with a message naming the expected place."""
import numpy as np
import pytest
import torch

from workbench.data import DATASETS, DataError, load_data


@pytest.mark.parametrize("name, classes", [("checkerboard", 0), ("moons", 2), ("spirals", 2), ("gaussians", 8)])
def test_toy_sets(name, classes):
    train, test = load_data(name, "train"), load_data(name, "test")
    assert train.x.shape == (50_000, 2) and test.x.shape == (10_000, 2)
    assert train.num_classes == classes and (train.labels is None) == (classes == 0)
    assert not torch.equal(train.x[:100], test.x[:100])  # held-out split is a different draw
    assert torch.equal(train.x, load_data(name, "train").x)  # deterministic
    assert train.x.abs().max() < 4


def test_checkerboard_occupies_only_black_squares():
    x = load_data("checkerboard").x
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2
    assert bool((parity == 0).all())


def test_digits():
    train, test = load_data("digits", "train"), load_data("digits", "test")
    assert train.x.shape == (1500, 1, 8, 8) and test.x.shape == (297, 1, 8, 8)
    assert train.x.min() == -1 and train.x.max() == 1
    assert train.num_classes == 10 and set(train.labels.tolist()) == set(range(10))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_torchvision_set_names_the_folder(tmp_path, name, folder):
    with pytest.raises(DataError, match=folder):
        load_data(name, data_dir=str(tmp_path))


def test_npz_and_folder_loaders(tmp_path):
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", images=images, labels=np.array([0, 1, 2, 0, 1, 2]))
    ds = load_data("npz", path=str(tmp_path / "mine.npz"))
    assert ds.x.shape == (6, 3, 8, 8) and ds.num_classes == 3
    assert torch.allclose(ds.x[0, :, 2, 3], torch.tensor(images[0, 2, 3], dtype=torch.float32) / 127.5 - 1)
    for i, image in enumerate(images):
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    ds = load_data("folder", path=str(tmp_path / "imgs"))
    assert ds.x.shape == (6, 3, 8, 8) and ds.num_classes == 2
    with pytest.raises(DataError, match="no such .npz"):
        load_data("npz", path=str(tmp_path / "missing.npz"))


def test_unknown_name():
    with pytest.raises(DataError, match="not one of"):
        load_data("imagenet")
    assert "digits" in DATASETS


def test_latents_loader_keeps_values_and_labels(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 4, 8, 8)).astype(np.float32) * 0.9
    np.savez(tmp_path / "lat.npz", latents=x, labels=np.array([0, 3, 1, 2, 3]))
    ds = load_data("latents", path=str(tmp_path / "lat.npz"))
    assert ds.kind == "latents" and ds.shape == (4, 8, 8) and ds.num_classes == 4
    assert torch.equal(ds.x, torch.from_numpy(x)) and ds.labels.tolist() == [0, 3, 1, 2, 3]
    np.savez(tmp_path / "flat.npz", latents=x.reshape(5, -1))
    with pytest.raises(DataError, match=r"flat.npz: needs float arrays 'mean' and 'std' \(N x C x H x W, a posterior\)"):
        load_data("latents", path=str(tmp_path / "flat.npz"))
    with pytest.raises(DataError, match="no such .npz file of latents"):
        load_data("latents", path=str(tmp_path / "missing.npz"))


def test_a_split_other_than_train_or_test_is_refused():
    with pytest.raises(ValueError) as error:
        load_data("digits", "TRAIN")
    assert str(error.value) == "split='TRAIN': 'train' or 'test'"
