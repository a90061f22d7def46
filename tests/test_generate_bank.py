"""``generate --mode calibrated|substitution`` (issue 24, last usability item): the bank is the pipeline's own unguided
samples of the empty prompt, drawn once and cached beside the negation set; ``--estimator ratio`` calibrates with the
fitted density-ratio classifier; the correction changes the images; bad values are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tiny_pipelines import IMAGE_SIZE  # noqa: E402

from safedenoiser import NegationSet  # noqa: E402
from safedenoiser.cli import main  # noqa: E402
from safedenoiser.methods import Calibration  # noqa: E402
from safedenoiser.methods.ratio import RatioCalibration, RatioFit  # noqa: E402
from safedenoiser.pipelines import bank as bank_module  # noqa: E402

BANK = 32


def _argv(model, prompts, out, *extra):
    return ["generate", "--model", str(model), "--prompts", str(prompts), "--out", str(out), "--steps", "2",
            "--height", str(IMAGE_SIZE), "--width", str(IMAGE_SIZE), "--threads", "1", *map(str, extra)]


def _own_bank(sd, size=BANK):
    """The bank computed here straight from diffusers: unguided samples of the empty prompt, seeds BANK_SEED + i."""
    generators = [torch.Generator().manual_seed(bank_module.BANK_SEED + i) for i in range(size)]
    return sd([""] * size, num_inference_steps=2, guidance_scale=1.0, generator=generators, output_type="latent",
              height=IMAGE_SIZE, width=IMAGE_SIZE).images.float()


@pytest.fixture
def files(sd, tmp_path, one_thread):
    """A negation set that covers bank sample 0 (8 copies within 0.01 of it) beside 40 items farther from every sample
    than the samples are from each other, so the kNN rule leaves part of the bank safe; and two requests: the empty
    prompt, unguided, with bank sample 0's seed (the run's image is the one the negation set covers), and a cat."""
    generator = torch.Generator().manual_seed(0)
    own = _own_bank(sd)
    near = own[:1] + 0.01 * torch.randn(8, *own.shape[1:], generator=generator)
    far = 2.5 + 0.1 * torch.randn(40, *own.shape[1:], generator=generator)
    NegationSet(torch.cat([near, far])).save(tmp_path / "neg.safetensors")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"prompt,seed,guidance\n,{bank_module.BANK_SEED},1\na cat,0,7.5\n")
    return tmp_path / "neg.safetensors", prompts, own


def _records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def _images(out):
    return {p.name: p.read_bytes() for p in (out / "images").glob("*.png")}


def test_the_bank_is_drawn_once_cached_and_the_correction_changes_the_images(model_dir, files, tmp_path, capsys,
                                                                          monkeypatch):
    neg, prompts, own = files
    draws = []
    real_draw = bank_module.draw_samples
    monkeypatch.setattr(bank_module, "draw_samples", lambda *a, **k: draws.append(k["samples"]) or real_draw(*a, **k))
    assert main(_argv(model_dir, prompts, tmp_path / "plain")) == 0
    assert main(_argv(model_dir, prompts, tmp_path / "a", "--negation", neg, "--mode", "calibrated",
                      "--bank-size", BANK, "--gain", 4)) == 0
    printed = capsys.readouterr().out
    cached = list(tmp_path.glob("neg.bank-*.safetensors"))
    assert draws == [BANK] and len(cached) == 1 and f"drew a bank of {BANK} unguided samples" in printed
    assert str(cached[0]) in printed and "beta* estimator kernel" in printed
    bank = NegationSet.load(cached[0])  # the pipeline's own unguided samples, as diffusers draws them
    assert torch.allclose(bank.data, own, atol=1e-5) and bank.metadata["bank"]["steps"] == 2
    records = _records(tmp_path / "a")
    assert {r["method"] for r in records} == {"safe-denoiser/calibrated"}
    params = records[0]["parameters"]
    assert params["estimator"] == "kernel" and params["bank_size"] == BANK and params["bank"] == str(cached[0])
    assert params["gain"] == 4.0 and params["calibration"].startswith(f"Calibration(bank={BANK},")
    assert "the correction changed 2 of them" in printed and records[0]["correction"]["max_weight"] > 1
    plain = _images(tmp_path / "plain")
    assert set(plain) == set(_images(tmp_path / "a")) and _images(tmp_path / "a")["000000.png"] != plain["000000.png"]
    # a second run (another mode, same bank) reads the cache; another bank size is another file
    assert main(_argv(model_dir, prompts, tmp_path / "b", "--negation", neg, "--mode", "substitution",
                      "--bank-size", BANK)) == 0
    assert draws == [BANK] and f"reusing a bank of {BANK}" in capsys.readouterr().out
    assert list(tmp_path.glob("neg.bank-*.safetensors")) == cached
    assert _records(tmp_path / "b")[0]["parameters"]["bank"] == str(cached[0])
    assert _images(tmp_path / "b")["000000.png"] != plain["000000.png"]
    assert main(_argv(model_dir, prompts, tmp_path / "c", "--negation", neg, "--mode", "substitution",
                      "--bank-size", BANK + 8)) == 0
    assert draws == [BANK, BANK + 8] and len(list(tmp_path.glob("neg.bank-*.safetensors"))) == 2


def test_estimator_ratio_builds_a_fitted_ratio_calibration(model_dir, files, tmp_path, capsys, monkeypatch):
    neg, prompts, _ = files
    monkeypatch.setattr(bank_module, "ratio_fit", lambda: RatioFit(steps=60, hidden=32, batch=64))
    built = []
    real_calibrate = bank_module.BankCalibration.__init__

    def spy(self, calibration, *args, **kwargs):
        built.append(calibration)
        real_calibrate(self, calibration, *args, **kwargs)

    monkeypatch.setattr(bank_module.BankCalibration, "__init__", spy)
    assert main(_argv(model_dir, prompts, tmp_path / "r", "--negation", neg, "--mode", "substitution",
                      "--bank-size", BANK, "--estimator", "ratio")) == 0
    assert len(built) == 1 and type(built[0]) is RatioCalibration
    fitted = list(tmp_path.glob("ratio-*.safetensors"))  # cached by methods.ratio beside the bank
    assert fitted == [tmp_path / f"ratio-{built[0].ratio.key}.safetensors"]
    params = _records(tmp_path / "r")[0]["parameters"]
    assert params["estimator"] == "ratio" and params["ratio_cache"] == str(fitted[0])
    assert params["calibration"].startswith("RatioCalibration(") and params["method"] == "SubstitutionCorrection"
    printed = capsys.readouterr().out
    assert "beta* estimator ratio" in printed and str(fitted[0]) in printed
    # the kernel estimator on the same bank is the other class
    assert main(_argv(model_dir, prompts, tmp_path / "k", "--negation", neg, "--mode", "substitution",
                      "--bank-size", BANK)) == 0
    assert type(built[-1]) is Calibration


@pytest.mark.parametrize("extra, message", [
    (["--mode", "calibrated", "--bank-size", "0"], "argument --bank-size: expected an integer >= 2, got '0'"),
    (["--mode", "calibrated", "--estimator", "foo"], "argument --estimator: invalid choice: 'foo' (choose from kernel, ratio)"),
    (["--estimator", "ratio"], "--estimator belongs to --mode calibrated, but this run uses --mode conditional (the "
                               "default with --negation) (also of --mode substitution)"),
    (["--mode", "conditional", "--bank-size", "8"], "--bank-size belongs to --mode calibrated, but this run uses --mode "
                                                    "conditional"),
    (["--mode", "paper", "--gain", "2"], "--gain belongs to --mode conditional, but this run uses --mode paper (also "
                                         "of --mode calibrated, substitution)"),
    (["--mode", "substitution", "--eta", "2"], "--eta belongs to --mode paper, but this run uses --mode substitution"),
])
def test_bad_values_are_refused_in_one_line_before_the_pipeline_loads(tmp_path, capsys, extra, message):
    neg = tmp_path / "neg.safetensors"
    NegationSet(torch.zeros(4, 4, 8, 8)).save(neg)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    try:
        code = main(_argv(tmp_path / "no-such-model", prompts, tmp_path / "r", "--negation", neg, *extra))
    except SystemExit as exit_info:  # argparse: the usage line, then the one line naming the value
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and "Traceback" not in "\n".join(err)


def test_profile_build_refuses_a_bank_mode_in_one_line(tmp_path, capsys):
    neg = tmp_path / "neg.safetensors"
    NegationSet(torch.zeros(4, 4, 8, 8)).save(neg)
    assert main(["profile", "build", "--model", str(tmp_path / "no-such-model"), "--negation", str(neg), "--mode",
                 "substitution", "--out", str(tmp_path / "p"), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mode substitution calibrates on a bank" in err[0] and "generate" in err[0]
