"""The ImageNet path at test size: an image folder encoded to posterior latents, a fresh latent drawn from them
every step, generated latents decoded by a (small, randomly initialised) AutoencoderKL and scored as images
against a reference statistics file; wb sample decodes too. Nothing downloads."""
import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import RunConfig, with_overrides
from workbench.data import load_data
from workbench.evaluate import fid
from workbench.evaluate.vae import SD_SCALE, center_crop, decode, encode_folder, load_vae
from workbench.run.train import draw_batch, train


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    """An AutoencoderKL with SD-VAE's layout at toy size: 3 -> 4 channels, 2x downsampling."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=4, sample_size=16)
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def latent_file(tmp_path_factory, vae_folder):
    images = tmp_path_factory.mktemp("images")
    g = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (images / label).mkdir()
        for i in range(6):
            Image.fromarray(g.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(images / label / f"{i}.png")
    out = images.parent / "latents.npz"
    summary = encode_folder(images, vae_folder, out, size=16, batch_size=5)
    assert summary == {"images": 12, "classes": 2, "shape": (4, 8, 8), "out": str(out)}
    return images, out


def test_encoded_file_holds_the_scaled_posterior_of_each_centre_crop(vae_folder, latent_file):
    images, out = latent_file
    with np.load(out) as written:
        assert written["mean"].dtype == written["std"].dtype == np.float16 and written["mean"].shape == (12, 4, 8, 8)
        assert written["labels"].tolist() == [0] * 6 + [1] * 6 and float(written["scale"]) == SD_SCALE
        crop = np.array(center_crop(Image.open(images / "dog" / "2.png"), 16))
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
        posterior = load_vae(vae_folder).encode(x).latent_dist
        np.testing.assert_allclose(written["mean"][8], (posterior.mean * SD_SCALE)[0].detach().numpy(), rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(written["std"][8], (posterior.std * SD_SCALE)[0].detach().numpy(), rtol=2e-3, atol=1e-4)


def test_center_crop_is_adms():
    square = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert np.array_equal(center_crop(square, 32), np.asarray(square.resize((32, 32), resample=Image.BOX)))
    wide = Image.fromarray(np.zeros((20, 50, 3), dtype=np.uint8))
    assert center_crop(wide, 16).shape == (16, 16, 3)


def test_every_step_draws_a_fresh_latent_from_the_posterior(latent_file):
    _, out = latent_file
    data = load_data("latents", path=str(out))
    assert data.std is not None and data.scale == SD_SCALE and data.num_classes == 2
    config = with_overrides(RunConfig(), {"data.name": "latents", "data.path": str(out), "train.batch_size": 4000})
    generator = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(0)
    first, second = draw_batch(data, config, generator), draw_batch(data, config, generator)
    index = torch.randint(len(data.x), (4000,), generator=g)  # the same rows as the first batch
    e = (first["x"] - data.x[index].float()) / data.std[index].float()
    assert abs(e.mean()) < 0.02 and abs(e.std() - 1) < 0.02
    assert not torch.equal(first["x"], second["x"])


def small_features(device):
    """A fixed random conv net standing in for Inception (whose weights are not on this machine)."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten()).to(device)
    return lambda x: net(x / 127.5 - 1).detach()


def test_latent_run_scored_as_decoded_images_and_sampled_as_images(tmp_path, monkeypatch, vae_folder, latent_file):
    _, out = latent_file
    monkeypatch.setattr(fid, "inception_extractor", lambda device, mode="clean": small_features(device))
    g = np.random.default_rng(2)
    reference = g.standard_normal((500, 32))
    np.savez(tmp_path / "ref.npz", mu=reference.mean(0), sigma=np.cov(reference, rowvar=False))
    config = with_overrides(RunConfig(), {
        "data.name": "latents", "data.path": str(out), "net.arch": "dit", "net.dit.hidden": 16, "net.dit.depth": 1,
        "net.dit.heads": 2, "net.dit.patch_size": 2, "train.steps": 2, "train.batch_size": 4, "train.device": "cpu",
        "eval.features": "inception", "eval.inception_mode": "legacy_tensorflow", "eval.vae_path": str(vae_folder),
        "eval.fid_reference": str(tmp_path / "ref.npz"), "eval.num_samples": 20, "eval.nfe": "1", "eval.fm_steps": "",
        "eval.seed": 3, "eval.quantize": "floor"})
    from workbench.evaluate.evaluators import evaluator_for
    from workbench.evaluate.names import metric_names

    evaluator = evaluator_for(config)
    result = train(config, tmp_path / "run", progress=False, evaluator=evaluator)
    assert set(result.metrics) == set(metric_names(config)) == {"fid_1nfe"} and np.isfinite(result.metrics["fid_1nfe"])
    assert evaluator.info == {"features": f"inception-legacy_tensorflow of images decoded by {vae_folder}",
                              "reference": str(tmp_path / "ref.npz"), "seed": 3}
    # the score is the Frechet distance of the decoded samples' features: recompute it by hand
    from workbench.evaluate.draw import generate

    latents = generate(result.ema, (4, 8, 8), (1,), (), 20, 3)["1nfe"]
    images = decode(load_vae(vae_folder), latents, SD_SCALE)
    feats = small_features("cpu")(fid.to_uint8(images, "floor").float()).double().numpy()
    with np.load(tmp_path / "ref.npz") as ref:
        expected = fid.frechet(feats.mean(0), np.cov(feats, rowvar=False), ref["mu"], ref["sigma"])
    assert result.metrics["fid_1nfe"] == pytest.approx(expected, rel=1e-5)
    # wb sample decodes latents into images
    sampled = CliRunner().invoke(app, ["sample", str(tmp_path / "run"), "--num", "20", "--out", str(tmp_path / "s.npz"),
                                       "--device", "cpu", "--seed", "3"])
    assert sampled.exit_code == 0, sampled.output
    with np.load(tmp_path / "s.npz") as written:
        assert written["arr_0"].shape == (20, 16, 16, 3)
        assert np.array_equal(written["arr_0"], fid.to_uint8(images, "floor").permute(0, 2, 3, 1).numpy())  # the run's


def test_missing_vae_or_reference_is_named(tmp_path, latent_file):
    _, out = latent_file
    base = ["train", "--set", "data.name=latents", "--set", f"data.path={out}", "--net", "dit", "--steps", "1",
            "--set", "eval.features=inception", "--run-dir", str(tmp_path / "r")]
    no_reference = CliRunner().invoke(app, base)
    assert no_reference.exit_code == 2 and ("eval.features='inception' on latents needs eval.fid_reference: the statistics "
                                            "of real images (ImageNet 256: ADM's VIRTUAL_imagenet256_labeled.npz)"
                                            in " ".join(no_reference.output.split()))
    no_vae = CliRunner().invoke(app, [*base, "--set", f"eval.fid_reference={tmp_path / 'ref.npz'}"])
    assert no_vae.exit_code == 2 and "stabilityai/sd-vae-ft-mse" in no_vae.output
    encode = CliRunner().invoke(app, ["encode", str(tmp_path / "nothing"), "--vae", str(tmp_path)])
    assert encode.exit_code == 2 and "no folder of" in encode.output
