"""FID/KID through clean-fid with the offline classifier features."""
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid
from PIL import Image

from workbench.config import DataConfig
from workbench.data import index_noise, load_data
from workbench.evaluate import classifier, fid
from workbench.evaluate.evaluators import image_metrics
from workbench.meanflow import sample

from conftest import numpy_weights


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def scorer(cache):
    return fid.image_scorer("digits", "classifier", cache)


def test_reference_image_sets_bracket_the_scores_of_a_model(scorer, cache):
    """The reference rows of an image report: held-out images below class means (the right modes, no spread) below
    the prior (the noise); each at its sample count; class means scored as the scorer scores those images."""
    from workbench.config import ConfigError, RunConfig, with_overrides
    from workbench.evaluate.evaluators import image_references

    config = with_overrides(RunConfig(), {"data.name": "digits", "eval.cache_dir": str(cache), "eval.num_samples": 500})
    refs = image_references(config)
    assert refs["held-out images"]["n"] == 297 and refs["class means"]["n"] == refs["prior (u = 0)"]["n"] == 500
    assert refs["held-out images"]["fid"] < refs["class means"]["fid"] < refs["prior (u = 0)"]["fid"]
    train = load_data("digits", "train")
    means = torch.stack([train.x[train.labels == c].mean(0) for c in range(10)])[torch.arange(500) % 10]
    assert refs["class means"]["fid"] == pytest.approx(scorer.score(means, seed=0)["fid"], rel=1e-6)
    with pytest.raises(ConfigError, match="classifier features only"):
        image_references(with_overrides(config, {"eval.features": "inception"}))


def test_classifier_is_accurate_and_deterministic(scorer, tmp_path):
    assert scorer.info["classifier_test_accuracy"] >= 0.95
    a, _ = classifier.train_classifier("digits", seed=0, epochs=1)
    b, _ = classifier.train_classifier("digits", seed=0, epochs=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_one_epoch_of_the_classifiers_training_is_pinned():
    """Every digits FID is measured with this classifier: its recipe (split, learning rate, batches, input noise,
    seeded order) is pinned by one epoch's logits on six test images, recorded with torch 2.14.1 on a CPU at
    commit time (a change of recipe moves them by far more than 1e-3; a torch build by far less)."""
    model, accuracy = classifier.train_classifier("digits", seed=0, epochs=1)
    with torch.no_grad():
        logits = model(load_data("digits", "test").x[:6]).double().numpy()
    with np.load(Path(__file__).parent / "data" / "digit_classifier_one_epoch.npz") as stored:
        np.testing.assert_allclose(logits, stored["logits"], rtol=0, atol=1e-3)
        assert abs(accuracy - float(stored["accuracy"])) <= 2 / 297  # the test split: 297 images
    assert classifier.CLASSIFIER_EPOCHS == 40  # the cached classifier's (the >= 95% accuracy above is for it)


def test_images_to_8_bits_clamp_round_or_floor_and_become_rgb():
    images = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 7)
    rounded, floored = fid.to_uint8(images, "round"), fid.to_uint8(images, "floor")
    assert rounded.dtype == floored.dtype == torch.uint8 and rounded.shape == (1, 3, 1, 7)
    assert rounded[0, 0, 0].tolist() == [0, 0, 0, 128, 191, 255, 255]  # (x + 1) * 127.5, rounded
    assert floored[0, 0, 0].tolist() == [0, 0, 0, 127, 191, 255, 255]  # floor((x + 1) / 2 * 255)
    assert torch.equal(rounded[0, 1], rounded[0, 0]) and torch.equal(rounded[0, 2], rounded[0, 0])
    rgb = torch.stack([torch.full((2, 2), v) for v in (-1.0, 0.0, 1.0)])[None]
    assert fid.to_uint8(rgb, "round")[0, :, 0, 0].tolist() == [0, 128, 255]  # three channels kept as they are
    with pytest.raises(ValueError, match="quantize='ceil': 'round' or 'floor'"):
        fid.to_uint8(images, "ceil")


def test_the_classifier_extractor_scales_to_the_data_range_and_greys_only_one_channel_data():
    """clean-fid hands every image over as RGB in [0, 255]: the extractor maps it to the classifier's [-1, 1] and,
    for grey data (digits), averages the three equal channels back to one."""
    torch.manual_seed(0)
    grey, colour = classifier.DigitClassifier(1, 8, 8, 10).eval(), classifier.DigitClassifier(3, 8, 8, 10).eval()
    batch = torch.randint(0, 256, (4, 3, 8, 8)).to(torch.uint8)
    with torch.no_grad():
        expected_grey = grey.features((batch.float() / 127.5 - 1).mean(1, keepdim=True))
        expected_colour = colour.features(batch.float() / 127.5 - 1)
    assert torch.equal(classifier.classifier_extractor(grey, 1)(batch), expected_grey)
    assert torch.equal(classifier.classifier_extractor(colour, 3)(batch), expected_colour)


def test_fid_of_the_reference_against_itself_is_zero(scorer):
    scores = scorer.score(load_data("digits", "train").x, seed=0)
    assert abs(scores["fid"]) < 1e-3


def test_features_do_not_depend_on_the_batching(scorer):
    images = fid.to_uint8(load_data("digits", "test").x)
    small = scorer.features(images[:16])
    assert small.shape == (16, 128)
    torch.testing.assert_close(small, scorer.features(images)[:16], rtol=1e-5, atol=1e-6)
    resized = fid.features(images[:16], scorer.make_extractor(torch.device("cpu")), fid.keep_size, batch_size=5)
    torch.testing.assert_close(resized, small, rtol=1e-5, atol=1e-6)  # clean-fid's per-image path, same features


def test_running_statistics_equal_numpys_on_the_same_features():
    """Chunks of different sizes, features far from zero (the case a plain sum of squares loses digits in)."""
    g = np.random.default_rng(0)
    feats = 1e3 + g.standard_normal((1000, 64)) @ g.standard_normal((64, 64))
    stats = fid.RunningStats()
    for part in np.split(feats, [7, 300, 301, 999]):
        stats.update(torch.from_numpy(part))
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, feats.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)
    two = fid.RunningStats()
    two.update(torch.from_numpy(feats[:2]))  # the fewest rows a covariance takes
    np.testing.assert_allclose(two.mean_cov()[1], np.cov(feats[:2], rowvar=False), rtol=1e-9, atol=1e-9)
    one = fid.RunningStats()
    one.update(torch.from_numpy(feats[:1]))
    with pytest.raises(ValueError) as error:
        one.mean_cov()
    assert str(error.value) == "a covariance needs at least 2 rows, got 1"


def test_streamed_score_equals_the_score_of_all_images_at_once(scorer):
    images = load_data("digits", "test").x + 0.2 * torch.randn(297, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    whole = scorer.score(images, seed=1)
    streamed = scorer.score_stream(images.split(50), seed=1)
    assert streamed["fid"] == pytest.approx(whole["fid"], rel=1e-9) and streamed["kid"] == pytest.approx(whole["kid"], rel=1e-6)
    feats = scorer.features(fid.to_uint8(images)).double().numpy()  # against np.cov of the same features
    expected_fid = fid.frechet(feats.mean(axis=0), np.cov(feats, rowvar=False), scorer.ref_mu, scorer.ref_sigma)
    assert whole["fid"] == pytest.approx(expected_fid, rel=1e-6)
    assert whole["kid"] == pytest.approx(fid.kid(feats, scorer.ref_feats, seed=1), rel=1e-5)


@pytest.mark.parametrize("names", [("mu", "sigma"), ("ref_mu", "ref_sigma")])
def test_reference_file_reads_adms_and_the_official_codes_names(tmp_path, names):
    mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
    np.savez(tmp_path / "ref.npz", **dict(zip(names, (mu, sigma))), extra=np.zeros(1))
    got_mu, got_sigma = fid.reference_file(tmp_path / "ref.npz")
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma)


def test_reference_file_errors_say_what_to_put_where(tmp_path):
    with pytest.raises(classifier.FeatureError) as missing:
        fid.reference_file(tmp_path / "nothing.npz")
    assert str(missing.value) == (
        f"eval.fid_reference={str(tmp_path / 'nothing.npz')!r}: no such file; for ImageNet 256 put ADM's reference "
        "batch VIRTUAL_imagenet256_labeled.npz (https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
        "ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz) there")
    for arrays in ({"mu": np.zeros(2)}, {"ref_mu": np.zeros(2), "sigma": np.eye(2)}):
        np.savez(tmp_path / "half.npz", **arrays)
        with pytest.raises(classifier.FeatureError) as half:
            fid.reference_file(tmp_path / "half.npz")
        assert str(half.value) == (f"{tmp_path / 'half.npz'}: needs arrays 'mu' and 'sigma' (or 'ref_mu' and "
                                   f"'ref_sigma'); has {sorted(arrays)}")


def test_user_files_get_their_own_cache_key(tmp_path):

    for name in ("a.npz", "b.npz"):
        np.savez(tmp_path / name, images=np.zeros((4, 8, 8), dtype=np.uint8), labels=np.arange(4))
    keys = {classifier.data_key(DataConfig(name="npz", path=str(tmp_path / name))) for name in ("a.npz", "b.npz")}
    assert len(keys) == 2 and all(key.startswith("npz-") and len(key) == len("npz-") + 10 for key in keys)
    assert classifier.data_key(DataConfig(name="digits")) == "digits"


def test_a_users_image_file_gets_its_own_classifier_and_reference(tmp_path):

    digits = load_data("digits", "train")
    pixels = np.round((digits.x.numpy()[:, 0] + 1) * 127.5).astype(np.uint8)
    np.savez(tmp_path / "mine.npz", images=pixels, labels=digits.labels.numpy())
    data = DataConfig(name="npz", path=str(tmp_path / "mine.npz"))
    scorer = fid.image_scorer(data, "classifier", tmp_path / "cache", seed=2)
    assert scorer.name == f"classifier-{classifier.data_key(data)}-seed2" and scorer.info["classifier_test_accuracy"] > 0.9
    feats = scorer.features(fid.to_uint8(load_data("npz", path=str(tmp_path / "mine.npz")).x)).double().numpy()
    np.testing.assert_allclose(scorer.ref_mu, feats.mean(0), rtol=1e-6, atol=1e-6)
    key = classifier.data_key(data)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"classifier-{key}-seed2.pt",
                                                                       f"reference-{key}-{scorer.name}.npz"]


def test_the_classifier_scorer_is_named_by_data_and_seed_and_placed_on_its_device(scorer, tmp_path):
    assert scorer.name == "classifier-digits-seed0" and scorer.device == torch.device("cpu")
    with pytest.raises(classifier.FeatureError) as bad:
        fid.image_scorer("digits", "inception", tmp_path, mode="tf")
    assert str(bad.value) == "eval.inception_mode='tf': not one of clean, legacy_tensorflow"


def test_fid_rises_along_a_corruption_ladder(scorer):
    images = load_data("digits", "test").x
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    fids = [scorer.score(images + level * noise, seed=0)["fid"] for level in (0.0, 0.2, 0.4, 0.8, 1.6)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_matches_clean_fid_compute_fid_over_png_folders(scorer, tmp_path):
    generated = load_data("digits", "test").x + 0.3 * torch.randn(297, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    reference = load_data("digits", "train").x
    for folder, images in (("gen", generated), ("ref", reference)):
        (tmp_path / folder).mkdir()
        for i, image in enumerate(fid.to_uint8(images)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / folder / f"{i:05d}.png")
    theirs = cleanfid.compute_fid(str(tmp_path / "gen"), str(tmp_path / "ref"), mode="clean",
                                  custom_feat_extractor=scorer.make_extractor(torch.device("cpu")),
                                  custom_fn_resize=fid.keep_size,
                                  device=torch.device("cpu"), num_workers=0, verbose=False)
    assert abs(scorer.score(generated, seed=0)["fid"] - theirs) < 1e-3


def test_kid_is_seeded(scorer):
    images = load_data("digits", "test").x + 0.5 * torch.randn(297, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    assert scorer.score(images, seed=3)["kid"] == scorer.score(images, seed=3)["kid"]
    assert scorer.score(images, seed=3)["kid"] != scorer.score(images, seed=4)["kid"]  # the seed picks the subsets


def test_offline_inception_names_the_file_and_never_downloads(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(fid, "INCEPTION_FILE", tmp_path / "inception-2015-12-05.pt")
    with pytest.raises(classifier.FeatureError, match=str(tmp_path / "inception-2015-12-05.pt")):
        fid.image_scorer("digits", "inception", tmp_path)


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_inception_is_clean_fids_extractor_in_the_chosen_mode_on_the_scorers_device(monkeypatch, tmp_path, mode):
    """With the weights file in place (an empty stand-in here), the scorer builds clean-fid's Inception in its
    mode on the device it is moved to, without DataParallel; clean mode resizes to 299 first, legacy inside."""
    import cleanfid.features

    built = []
    monkeypatch.setattr(fid, "INCEPTION_FILE", tmp_path / "inception.pt")
    (tmp_path / "inception.pt").touch()
    monkeypatch.setattr(cleanfid.features, "build_feature_extractor", lambda *a, **k: built.append((a, k)) or len(built))
    assert fid.inception_extractor(torch.device("cpu")) == 1 and built[-1] == (("clean", torch.device("cpu")),
                                                                                 {"use_dataparallel": False})
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2), sigma=np.eye(2))
    scorer = fid.image_scorer("digits", "inception", tmp_path, mode=mode, reference=str(tmp_path / "ref.npz"))
    assert scorer.name == f"inception-{mode}" and scorer.to("meta") is scorer and scorer.device == torch.device("meta")
    assert scorer.make_extractor(scorer.device) == len(built)
    assert built[-1] == ((mode, torch.device("meta")), {"use_dataparallel": False})
    assert (scorer.fn_resize is None) == (mode == "legacy_tensorflow")
    assert scorer.info["reference"] == str(tmp_path / "ref.npz")
    assert all(args == (mode, args[1]) and isinstance(args[1], torch.device) for args, _ in built[1:])


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_cifar10_with_inception_reads_clean_fids_own_statistics(monkeypatch, tmp_path, mode):
    """CIFAR-10's reference is clean-fid's precomputed train statistics of the mode (stats/ beside its package); missing,
    it is named with where to get it. Other sets compute theirs."""
    import cleanfid.features

    monkeypatch.setattr(fid, "INCEPTION_FILE", tmp_path / "inception.pt")
    (tmp_path / "inception.pt").touch()
    monkeypatch.setattr(cleanfid.features, "build_feature_extractor", lambda *a, **k: None)
    package = tmp_path / "cleanfid"
    monkeypatch.setattr(fid.cleanfid, "__file__", str(package / "__init__.py"))
    stats = package / "stats" / f"cifar10_{mode}_train_32.npz"
    with pytest.raises(classifier.FeatureError) as missing:
        fid.image_scorer("cifar10", "inception", tmp_path / "cache", 0, mode)
    assert str(missing.value) == (f"clean-fid's CIFAR-10 statistics are not at {stats}; this machine is offline. Put "
                                  f"https://www.cs.cmu.edu/~clean-fid/stats/cifar10_{mode}_train_32.npz there")
    stats.parent.mkdir(parents=True)
    np.savez(stats, mu=np.arange(3.0), sigma=2 * np.eye(3))
    scorer = fid.image_scorer("cifar10", "inception", tmp_path / "cache", 0, mode)
    assert np.array_equal(scorer.ref_mu, np.arange(3.0)) and np.array_equal(scorer.ref_sigma, 2 * np.eye(3))
    assert not (tmp_path / "cache").exists()  # nothing computed
    if mode == "clean":
        assert scorer.fn_resize(np.zeros((8, 8, 3), np.uint8)).shape == (299, 299, 3)


def test_to_uint8_quantizes_like_a_png():
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    assert fid.to_uint8(x)[0, :, 0].tolist() == [[0, 0, 128, 255, 255]] * 3
    assert np.array_equal(fid.keep_size(np.ones((2, 2, 3), np.uint8)), np.ones((2, 2, 3), np.float32))


def test_wb_train_and_eval_on_digits_record_fid(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from workbench.cli import app

    options = ["--set", "net.unet.channels=8", "--set", "train.batch_size=16", "--set", "eval.num_samples=200",
               "--set", "eval.fm_steps=2", "--set", f"eval.cache_dir={tmp_path / 'cache'}", "--set", "sample.num_images=4"]
    out = CliRunner().invoke(app, ["train", "--data", "digits", "--net", "unet", "--steps", "2",
                                   "--run-dir", str(tmp_path / "run"), *options])
    assert out.exit_code == 0, out.output
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert record["features"] == "classifier-digits-seed0" and record["num_samples"] == 200
    assert set(record["metrics"]) == {f"{m}_{s}" for m in ("fid", "kid") for s in ("1nfe", "2nfe", "fm2")}
    again = CliRunner().invoke(app, ["eval", str(tmp_path / "run")])
    assert again.exit_code == 0 and json.loads((tmp_path / "run" / "eval.json").read_text()) == record
    monkeypatch.setattr(fid, "INCEPTION_FILE", tmp_path / "inception-2015-12-05.pt")  # as on an offline machine
    offline = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--set", "eval.features=inception"])
    assert offline.exit_code == 2 and "inception-2015-12-05.pt" in offline.output
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == record  # nothing recorded is lost


def test_floor_quantisation_is_the_official_evaluations():
    """eval.quantize=floor: floor(255 x') with x' = (x + 1) / 2 clamped, as py-meanflow's eval_loop.py quantises."""
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6)
    assert fid.to_uint8(x, "floor")[0, 0, 0].tolist() == [0, 0, 127, 254, 255, 255]
    assert fid.to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 255, 255, 255]


class ScaledNoise(torch.nn.Module):
    """u(z, r, t) = w (1 + t - r) z: one MeanFlow step gives (1 - 2w) e, one Euler step (1 - w) e."""

    num_classes = 0

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, z, t, r, labels=None):
        return self.w * (1 + t - r).view(-1, 1, 1, 1) * z


def test_image_metrics_score_every_sampler_with_the_seed_quantisation_and_decoder(scorer):
    net, shape = ScaledNoise(0.3), (1, 8, 8)
    noise = index_noise(3, range(120), shape)
    decode = lambda x: x.flip(-1)  # a decoder that changes the images
    scores = image_metrics(net, scorer, shape, (1, 2), (2,), 120, 3, "floor", decode=decode)
    assert set(scores) == {f"{m}_{s}" for m in ("fid", "kid") for s in ("1nfe", "2nfe", "fm2")}
    for name, (steps, euler) in {"1nfe": (1, False), "2nfe": (2, False), "fm2": (2, True)}.items():
        expected = scorer.score_stream([decode(sample(net, noise, steps, euler=euler))], seed=3, quantize="floor")
        assert scores[f"fid_{name}"] == pytest.approx(expected["fid"], rel=1e-9)
        assert scores[f"kid_{name}"] == pytest.approx(expected["kid"], rel=1e-9)
    assert scores["fid_1nfe"] != pytest.approx(scores["fid_fm2"])
    plain = image_metrics(net, scorer, shape, (1,), (), 120, 3, "floor")  # no decoder: the samples themselves
    assert plain["fid_1nfe"] == pytest.approx(scorer.score_stream([sample(net, noise, 1)], seed=3, quantize="floor")["fid"],
                                              rel=1e-9)


def test_the_classifier_features_are_a_fixed_function():
    """FIDs of the classifier feature set compare across commits only while its network stays the same: with
    numpy-drawn weights, its features and logits equal those stored in tests/data at commit 833285e's network."""
    net = classifier.DigitClassifier(1, 8, 8, 10).double()
    assert sum(p.numel() for p in net.parameters()) == 89_930
    rng = np.random.default_rng(0)
    numpy_weights(net, rng, 0.3)
    x = torch.from_numpy(rng.standard_normal((4, 1, 8, 8)))
    with np.load(Path(__file__).parent / "data" / "digit_classifier_function.npz") as stored:
        np.testing.assert_allclose(net.features(x).detach().numpy(), stored["features"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(net(x).detach().numpy(), stored["logits"], rtol=1e-10, atol=1e-12)


def test_scores_round_unless_told_to_floor(scorer):
    images = load_data("digits", "test").x + 0.3 * torch.randn(297, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    rounded = scorer.score_stream([images], seed=0, quantize="round")
    assert scorer.score(images, seed=0) == scorer.score_stream([images], seed=0) == rounded
    assert scorer.score_stream([images], seed=0, quantize="floor") != rounded


class FlatScorer:
    """Features = the uint8 pixels as floats: a stand-in scorer whose statistics are easy to recompute."""

    device = torch.device("cpu")

    def features(self, images):
        return images.flatten(1).double()


@pytest.mark.parametrize("keep", [True, False])
def test_reference_statistics_of_the_train_split_are_computed_once_and_cached(tmp_path, keep):
    feats = fid.to_uint8(load_data("digits", "train").x).flatten(1).double().numpy()
    cache = tmp_path / "sub" / "ref.npz"
    mu, sigma, kept = fid.reference_statistics(classifier.as_source("digits"), FlatScorer(), cache, keep, chunk=500)
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)
    assert np.array_equal(kept, feats) if keep else kept is None
    with np.load(cache) as stored:
        assert sorted(stored) == (["feats", "mu", "sigma"] if keep else ["mu", "sigma"])
    assert list(tmp_path.glob("sub/*")) == [cache]  # no temporary file left
    again = fid.reference_statistics(classifier.as_source("digits"), None, cache, keep)  # from the cache: no scorer needed
    assert np.array_equal(again[0], mu) and np.array_equal(again[1], sigma)
    assert np.array_equal(again[2], kept) if keep else again[2] is None


def test_the_classifier_is_trained_once_per_data_set_and_seed_then_loaded(tmp_path, monkeypatch):
    model, accuracy = classifier.load_classifier(classifier.as_source("digits"), tmp_path / "cache", seed=0)
    path = tmp_path / "cache" / "classifier-digits-seed0.pt"
    assert list((tmp_path / "cache").iterdir()) == [path]
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("trained again"))
    loaded, loaded_accuracy = classifier.load_classifier(classifier.as_source("digits"), tmp_path / "cache", seed=0)
    assert loaded_accuracy == accuracy and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    stored = torch.load(path, weights_only=False)
    assert stored["shape"] == (1, 8, 8) and stored["num_classes"] == 10 and stored["accuracy"] == accuracy


def test_the_classifier_needs_labelled_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, path in (("moons", ""), ("npz", "unlabelled.npz")):
        if path:
            np.savez(path, images=np.zeros((4, 8, 8), dtype=np.uint8))
        with pytest.raises(classifier.FeatureError) as error:
            classifier.train_classifier(DataConfig(name=name, path=path), seed=0, epochs=1)
        assert str(error.value) == f"data.name={name!r}: the classifier features need labelled images"


def test_caches_are_written_under_missing_folders_and_read_back(tmp_path):
    cache = tmp_path / "a" / "b"
    scorer = fid.image_scorer("digits", "classifier", cache, 0)
    again = fid.image_scorer("digits", "classifier", cache, 0)  # both read from the files now
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["classifier", "reference"]
    assert np.array_equal(again.ref_mu, scorer.ref_mu) and again.info == scorer.info


def test_the_scorer_resizes_each_image_with_its_resizer_before_the_features():
    scorer = fid.ImageScorer("stand-in", lambda device: (lambda batch: batch.flatten(1)), lambda image: image[:2, :2] * 0 + 7)
    feats = scorer.features(torch.full((3, 3, 4, 4), 5, dtype=torch.uint8))
    assert feats.shape == (3, 12) and bool((feats == 7).all())


def test_data_is_loaded_from_the_configured_folder(monkeypatch):
    seen = []
    monkeypatch.setattr(classifier, "load_data", lambda *args, **kwargs: seen.append((args, kwargs)))
    classifier.load(DataConfig(name="digits", data_dir="elsewhere", path="p"), "test")
    assert seen == [(("digits", "test"), {"path": "p", "data_dir": "elsewhere"})]


def test_other_sets_with_inception_compute_their_own_reference_once(monkeypatch, tmp_path):
    """Only CIFAR-10 has clean-fid's statistics: the digits' reference comes from their train split through the
    (stand-in) network, cached under the given folder, created with its parents."""
    import cleanfid.features

    monkeypatch.setattr(fid, "INCEPTION_FILE", tmp_path / "inception.pt")
    (tmp_path / "inception.pt").touch()
    monkeypatch.setattr(cleanfid.features, "build_feature_extractor",
                        lambda *a, **k: (lambda batch: batch.float().mean((2, 3))))
    scorer = fid.image_scorer("digits", "inception", tmp_path / "a" / "b", 0, "legacy_tensorflow")
    images = fid.to_uint8(load_data("digits", "train").x).float()
    np.testing.assert_allclose(scorer.ref_mu, images.mean((2, 3)).mean(0).numpy(), rtol=1e-6)
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["reference-digits-inception-legacy_tensorflow.npz"]
