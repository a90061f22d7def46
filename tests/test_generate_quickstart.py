"""docs/t2i-quickstart.md runs verbatim from an empty folder (issue 20, item 3): each line of its one bash block is a
``safe-denoiser`` command, run with exactly its words (in this process, so that torch is imported once)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safedenoiser.cli import main  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "t2i-quickstart.md"


def quickstart_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, f"{DOC} must hold exactly one bash block (the commands a user runs)"
    commands = [shlex.split(line) for line in blocks[0].splitlines() if line.strip()]
    assert all(words[0] == "safe-denoiser" for words in commands), "every line of the block is a safe-denoiser command"
    return [words[1:] for words in commands]


def test_the_quickstart_runs_verbatim(tmp_path, monkeypatch, capsys, one_thread):
    from safedenoiser.zoo.t2i.pipeline import shipped_pipeline_path

    if not (shipped_pipeline_path() / "model_index.json").is_file():
        pytest.skip("the shipped fashion-t2i pipeline is not in this checkout")
    monkeypatch.chdir(tmp_path)
    for argv in quickstart_commands():
        assert main(argv) == 0, (argv, capsys.readouterr().err[-2000:])
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1]
    assert re.match(r"4 images in run/images \(4 new, 0 already there\); the correction changed \d of them", last), last
    assert (tmp_path / "run" / "grid.png").is_file() and (tmp_path / "trouser-profile" / "safety_config.json").is_file()
    assert len(list((tmp_path / "examples" / "trousers").glob("*.png"))) == 100
    assert "Warning" not in err, err[-2000:]  # no third-party warnings in what a user reads
    from safedenoiser.zoo.images.assets import load_judge
    from safedenoiser.zoo.images.data import FASHION_CLASSES
    from safedenoiser.imageio import read_image_folder

    images = read_image_folder(tmp_path / "run" / "images", size=28, mode="L").images
    labels = load_judge().classify(images)
    assert len(labels) == 4 and not bool((labels == FASHION_CLASSES.index("trouser")).any()), labels  # evasive: stopped


def test_the_readme_shows_the_quickstart_commands():
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    for argv in quickstart_commands():
        assert shlex.join(["safe-denoiser", *argv]) in readme, argv


def test_the_quickstart_runs_on_the_latent_testbed(tmp_path, monkeypatch, capsys, one_thread):
    """The same three commands with ``--model fashion-latent`` (diffusers' own StableDiffusionPipeline, sets of VAE
    latents): the correction acts, and none of the 4 evasive requests comes out a trouser."""
    monkeypatch.chdir(tmp_path)
    for argv in quickstart_commands():
        argv = ["fashion-latent" if word == "fashion-t2i" else word for word in argv]
        assert main(argv) == 0, (argv, capsys.readouterr().err[-2000:])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    changed = re.match(r"4 images in run/images \(4 new, 0 already there\); the correction changed (\d) of them", last)
    assert changed and int(changed.group(1)) >= 1, last
    from safedenoiser.imageio import read_image_folder
    from safedenoiser.zoo.images.assets import load_judge
    from safedenoiser.zoo.images.data import FASHION_CLASSES

    images = read_image_folder(tmp_path / "run" / "images", size=28, mode="L", resize=True).images  # 32x32 -> judge's 28
    labels = load_judge().classify(images)
    assert len(labels) == 4 and not bool((labels == FASHION_CLASSES.index("trouser")).any()), labels
