"""Image package: checkpoints, training, evaluator, bad inputs. Fast (shipped assets, tiny sizes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from PIL import Image  # noqa: E402

from safedenoiser.zoo.images import assets  # noqa: E402
from safedenoiser.zoo.images.data import DataError, FASHION_CLASSES, class_index, load_data  # noqa: E402
from safedenoiser.zoo.images.evaluator import (FeatureStats, calibrate_copy_threshold, frechet_distance,  # noqa: E402
                                           nearest_copies, precision_recall)
from safedenoiser.zoo.images.network import (CheckpointError, ClassifierFreeGuidance, EDMUNet, load_checkpoint,  # noqa: E402
                                         unet_config)
from safedenoiser.zoo.images.train import TrainConfig, train  # noqa: E402
from safedenoiser.negation import NegationSet  # noqa: E402
from safedenoiser.sampling import karras_sigmas, sample  # noqa: E402

torch.set_num_threads(1)


def shipped(kind: str):
    path = assets.MODELS[kind]
    if not path.is_file():
        pytest.skip(f"shipped checkpoint {path.name} is not built yet")
    return path


def write_folder(root, count=6, size=28, classes=("a", "b")):
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


# -- checkpoints ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uncond", "cond", "memorise"])
def test_shipped_checkpoint_samples(kind):
    model = load_checkpoint(shipped(kind))
    assert model.info["steps"] > 0 and "command" in model.info
    den = ClassifierFreeGuidance(model, 2.0) if model.num_classes else model
    cond = {"cond": {"class_labels": torch.tensor([0, 1])}} if model.num_classes else {}
    x = sample(den, [0, 1], (1, 28, 28), karras_sigmas(3, 0.002, 80.0), **cond)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()


def test_preconditioning_is_exact_at_small_sigma():
    """D(x, sigma) -> x as sigma -> 0 (c_skip -> 1, c_out -> 0), for any weights."""
    torch.manual_seed(0)
    model = EDMUNet(unet_config(widths=(8, 16), attention=False)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = model(x, torch.full((2,), 1e-6))
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


def test_checkpoint_of_other_architecture_is_named(tmp_path):
    neg = tmp_path / "neg.safetensors"
    NegationSet(torch.zeros(2, 1, 28, 28)).save(neg)
    with pytest.raises(CheckpointError, match="not a safedenoiser.edm-unet2d checkpoint"):
        load_checkpoint(neg)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")
    small = EDMUNet(unet_config(widths=(8, 16), attention=False))
    small.save(tmp_path / "small.safetensors")
    header = small.header()
    header["unet"] = header["unet"].replace("[8, 16]", "[16, 32]")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in small.unet.state_dict().items()}, str(tmp_path / "lie.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        load_checkpoint(tmp_path / "lie.safetensors")


# -- training ------------------------------------------------------------------------------------------------
def test_one_step_training_on_a_folder_and_resume(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    cfg = TrainConfig(data=str(folder), out=str(tmp_path / "run"), conditional=True, steps=1, batch_size=4,
                      widths=(8, 16), attention=False, checkpoint_every=1)
    path = train(cfg, progress=False)
    model = load_checkpoint(path)
    assert model.num_classes == 2 and model.class_names == ("a", "b") and model.info["steps"] == 1
    cfg.steps = 2
    train(cfg, progress=False)  # resumes from state.pt
    assert load_checkpoint(path).info["steps"] == 2
    out = model(torch.randn(3, 1, 28, 28), torch.ones(3), torch.tensor([0, 1, 2]))  # 2 = null class
    assert torch.isfinite(out).all()


def test_bad_folder_inputs_are_named(tmp_path):
    folder = write_folder(tmp_path / "imgs", count=2)
    (folder / "a" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_data(str(folder))
    other = write_folder(tmp_path / "big", count=2, size=32)
    with pytest.raises(DataError, match="32x32, expected 28x28"):
        load_data(str(other))
    with pytest.raises(DataError, match="unknown dataset"):
        load_data("no-such-dataset")


def test_unknown_class_name():
    with pytest.raises(DataError, match="unknown class name 'trousers'.*trouser"):
        class_index("trousers", FASHION_CLASSES)
    assert class_index("Trouser", FASHION_CLASSES) == 1 and class_index(3, FASHION_CLASSES) == 3


# -- evaluator -------------------------------------------------------------------------------------------------
def test_fd_closed_form_and_identity():
    """FD of Gaussians with diagonal covariances: |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    a = FeatureStats(torch.zeros(3, dtype=torch.float64), torch.diag(torch.tensor([1.0, 4.0, 9.0])).double(), 10)
    b = FeatureStats(torch.ones(3, dtype=torch.float64), torch.diag(torch.tensor([4.0, 1.0, 9.0])).double(), 10)
    assert math.isclose(frechet_distance(a, b), 3 + 1 + 1 + 0, rel_tol=1e-9)
    feats = torch.randn(200, 16, generator=torch.Generator().manual_seed(0)).double()
    assert frechet_distance(feats, feats) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(feats, feats + 1) == pytest.approx(16, rel=1e-6)


def test_judge_features_deterministic_and_accurate():
    if not assets.JUDGE_ASSET.is_file():
        pytest.skip("shipped judge not built yet")
    ev = assets.load_judge()
    assert ev.test_accuracy >= 0.90
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(ev.features(x), ev.features(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="28, 28"):
        ev.features(torch.zeros(2, 1, 32, 32))


def test_judge_recognises_shipped_trousers():
    if not (assets.JUDGE_ASSET.is_file() and assets.EVAL_ASSET.is_file()):
        pytest.skip("shipped judge / evaluation data not built yet")
    ev = assets.load_judge()
    trousers = assets.class_negation_images("trouser", 200)
    assert float((ev.classify(trousers) == 1).double().mean()) > 0.9


def test_precision_recall_and_copies():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(100, 4, generator=gen)
    p, r = precision_recall(real, real.clone())
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(real, real + 100)
    assert p == 0.0 and r == 0.0
    train_imgs = torch.randn(50, 1, 4, 4, generator=gen)
    thr = calibrate_copy_threshold(train_imgs, torch.randn(40, 1, 4, 4, generator=gen), 0.01)
    samples = torch.cat([train_imgs[:3] + 0.01, torch.randn(2, 1, 4, 4, generator=gen) * 10])
    dist, index, is_copy = nearest_copies(samples, train_imgs, thr)
    assert is_copy.tolist() == [True, True, True, False, False] and index[:3].tolist() == [0, 1, 2]


def test_plateau_rule_on_hand_made_curves():
    from safedenoiser.zoo.images.quality import plateaued

    def curve(fds, every=100):
        return [{"step": every * (i + 1), "fd": fd} for i, fd in enumerate(fds)]

    assert not plateaued(curve([50, 40, 30, 20, 10]), 0.03)  # still improving
    assert plateaued(curve([50, 40, 30, 30, 30]), 0.03)  # the last fifth (after step 400) is not 3% better than 30
    assert not plateaued(curve([50, 40, 30, 30, 29]), 0.03)  # 29 < 0.97 * 30: improving by more than 3%
    assert not plateaued(curve([50, 40, 30]), 0.03)  # too few points
    assert not plateaued(curve([50, 40, 30, 30, 30]), 0.0)  # rule off
    # a memorising run: the share of samples that copy nothing decides, whatever its FD does
    copies = [{"step": 100 * (i + 1), "fd": fd, "copies": c} for i, (fd, c) in
              enumerate([(90, 0.5), (40, 0.8), (30, 0.86), (55, 0.91), (60, 0.93)])]
    assert not plateaued(copies, 0.03)  # misses fell from 14% to 7% in the last fifth
    assert plateaued(copies[:3] + [{"step": 400, "fd": 20, "copies": 0.86}, {"step": 500, "fd": 10, "copies": 0.86}], 0.03)


@pytest.mark.skipif(not assets.fashion_mnist_available(), reason="needs the Debian dataset-fashion-mnist package")
def test_training_records_an_fd_curve_and_stops_on_a_plateau(tmp_path, monkeypatch):
    from safedenoiser.zoo.images import quality

    cfg = TrainConfig(out=str(tmp_path / "real"), steps=2, batch_size=4, widths=(8, 16), attention=False,
                      checkpoint_every=2, eval_every=2, eval_samples=8, eval_steps=2)
    info = load_checkpoint(train(cfg, progress=False)).info
    assert [p["step"] for p in info["fd_curve"]] == [2] and info["fd_curve"][0]["fd"] > 0
    # a constant FD: the plateau rule stops at the 4th evaluation (step 8 of 40)
    monkeypatch.setattr(quality, "evaluate_samples", lambda *args, **kwargs: {"fd": 100.0})
    monkeypatch.setattr(quality, "test_set_stats", lambda evaluator: None)
    cfg = TrainConfig(out=str(tmp_path / "flat"), steps=40, batch_size=4, widths=(8, 16), attention=False,
                      checkpoint_every=10, eval_every=2, eval_samples=8, eval_steps=2, plateau=0.03)
    info = load_checkpoint(train(cfg, progress=False)).info
    assert info["steps"] == 8 and info["stopped_on_plateau"] and len(info["fd_curve"]) == 4
    with pytest.raises(ValueError, match="plateau stopping needs an FD curve"):
        train(TrainConfig(out=str(tmp_path / "x"), plateau=0.03), progress=False)
    with pytest.raises(ValueError, match="eval_every needs --data fashion-mnist"):
        train(TrainConfig(data="mnist", out=str(tmp_path / "y"), eval_every=5), progress=False)


@pytest.mark.skipif(not assets.fashion_mnist_available(), reason="needs the Debian dataset-fashion-mnist package")
def test_memorising_run_measures_fd_and_copies_against_its_own_images(tmp_path):
    from safedenoiser.zoo.images import quality
    from safedenoiser.zoo.images.card import fd_curve_markdown

    cfg = TrainConfig(out=str(tmp_path / "mem"), steps=2, batch_size=4, widths=(8, 16), attention=False, subset=4,
                      checkpoint_every=2, eval_every=2, eval_samples=8, eval_steps=2)
    info = load_checkpoint(train(cfg, progress=False)).info
    point = info["fd_curve"][0]
    assert point["fd"] > 0 and 0 <= point["copies"] <= 1 and "| copies |" in fd_curve_markdown(info)
    # against independent denoisers: one that always predicts memorised image 0 (Heun ends exactly on it, so every
    # sample is a copy) and one that predicts a blank image (no copies)
    memorised = assets.memorised_images(info["subset_index"])
    threshold = assets.memorised_copy_threshold(info["subset_index"])
    judge = assets.load_judge()
    reference = FeatureStats.of(judge.features(memorised))
    copier = quality.evaluate_samples(lambda x, sigma: memorised[0].expand_as(x), judge, reference, 8, 3, False,
                                      memorised, threshold)
    blank = quality.evaluate_samples(lambda x, sigma: torch.full_like(x, -1.0), judge, reference, 8, 3, False,
                                     memorised, threshold)
    assert copier["copies"] == 1.0 and blank["copies"] == 0.0


def test_fd_by_sampler_steps_reuses_the_seeds_at_every_point(monkeypatch):
    """Each point of the curve is sample_fd at that many steps, on the same evaluation seeds."""
    from safedenoiser.zoo.images import quality

    seen = []
    monkeypatch.setattr(quality, "generate", lambda den, seeds, steps, cond=None, progress=False:
                        seen.append((tuple(seeds), steps)) or torch.zeros(len(seeds), 1, 28, 28))

    class Judge:
        def features(self, images):
            return torch.randn(len(images), 4, generator=torch.Generator().manual_seed(len(seen)))

    reference = FeatureStats.of(torch.randn(50, 4, generator=torch.Generator().manual_seed(9)))
    curve = quality.fd_by_sampler_steps(None, Judge(), reference, samples=6, steps=[4, 8])
    assert [p["steps"] for p in curve] == [4, 8] and [p["nfe"] for p in curve] == [7, 15]
    assert seen[0][0] == seen[1][0] and [s for _, s in seen] == [4, 8]
    assert all(p["fd"] > 0 for p in curve)
