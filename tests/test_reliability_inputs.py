"""Reliability of the input surfaces (issue 25 items 1, 6, 7, 11; issue 20 items 6, 7): image files are opened by
content in the supported formats only (never a program), nothing is converted silently, one bad file does not stop a
build, ``negation build`` errors are one line before slow work, sharded builds merge bit-identically, and messages
name the right set and file. Each case is recorded for the reliability table (tests/reliability_table.py)."""

from __future__ import annotations

import os
import subprocess
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

import reliability_table  # noqa: E402

from safedenoiser import NegationSet, NegationSetError  # noqa: E402
from safedenoiser.cli import main  # noqa: E402
from safedenoiser.imageio import ImageReadError, iter_image_batches, read_image  # noqa: E402
from safedenoiser.pipelines.negation_build import build_from_folder, build_negation_set  # noqa: E402

EPS = ("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
       "newpath 0 0 moveto 28 28 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    reliability_table.flush()


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    """Builds run as one process unless a test says otherwise (RANK / WORLD_SIZE of a launcher are ignored)."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def _grey(path: Path, size: tuple[int, int] = (28, 28), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).save(path)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(path: Path, width: int, height: int, idat: bytes) -> Path:
    """A grey 8-bit PNG with the given header size and IDAT bytes (for bombs and broken streams)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_subprocess(monkeypatch):
    """Fail on any attempt to start a program (Pillow's EPS reader probes and runs Ghostscript through Popen)."""
    from PIL import EpsImagePlugin

    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # make the reader probe for Ghostscript again
    return started


# ------------------------------------------------------------------------------- item 1: formats by content
def test_eps_named_png_is_refused_without_starting_a_program(tmp_path, no_subprocess):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "trouser.png").write_text(EPS)
    _grey(folder / "ok.png")
    with pytest.raises(ImageReadError, match=r"trouser.png: PostScript / EPS content, not a PNG, JPEG"):
        read_image(folder / "trouser.png")
    report = build_from_folder("fashion-t2i", folder, tmp_path / "neg.safetensors", progress=False)
    assert report.count == 1 and "PostScript / EPS content" in report.skipped[str(folder / "trouser.png")]
    assert no_subprocess == []
    reliability_table.record("inputs", "negation build / read_image", "EPS content named trouser.png",
                             "refused by name: " + report.skipped[str(folder / "trouser.png")] + "; no program started")


def test_web_upload_of_eps_names_the_file_not_the_server_folder(tmp_path, no_subprocess):
    from safedenoiser.web.generation import Limits, WebInputError, negation_from_uploads

    upload = tmp_path / "gradio" / "0123abcd" / "trouser.png"
    upload.parent.mkdir(parents=True)
    upload.write_text(EPS)
    with pytest.raises(WebInputError) as err:
        negation_from_uploads([upload], Limits(max_uploads=4))
    message = str(err.value)
    assert "trouser.png: PostScript / EPS content" in message and str(tmp_path) not in message and "gs" not in message.split()
    assert no_subprocess == []
    reliability_table.record("inputs", "web: negation_from_uploads", "EPS content named trouser.png", message)


def test_upload_notes_name_files_not_server_folders(tmp_path):
    from PIL import Image

    from safedenoiser.web.generation import Limits, negation_from_uploads

    folder = tmp_path / "gradio" / "9f8e"
    folder.mkdir(parents=True)
    frames = [Image.new("L", (28, 28), v) for v in (0, 255)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    _grey(folder / "wide.png", size=(60, 20))
    notes = negation_from_uploads([folder / "anim.gif", folder / "wide.png"], Limits(max_uploads=4)).metadata["reading_notes"]
    assert notes == ["anim.gif has 2 frames; the first one is used", "1 of 2 images have another aspect ratio than the "
                     "model's 28x28 and are stretched: wide.png 60x20"]
    reliability_table.record("inputs", "web: negation_from_uploads", "animated GIF and a 60x20 image",
                             "notes under the status: " + " / ".join(notes))


def test_page_status_never_shows_server_paths():
    from safedenoiser.web.generation import without_paths

    upload = "/tmp/gradio/5f2a/trouser.png"
    line = without_paths(f"cannot read image {upload}: broken; see /tmp/safedenoiser-web-x1/run-000001/settings.json",
                         [upload])
    assert line == "cannot read image trouser.png: broken; see settings.json"


# ---------------------------------------------------------------------------- item 6: no silent conversions
def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    values = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    Image.fromarray((values // 257).astype(np.uint8)).save(tmp_path / "eight.png")
    sixteen, eight = read_image(tmp_path / "sixteen.png", mode="L"), read_image(tmp_path / "eight.png", mode="L")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I;16")
    assert float((sixteen - eight).abs().max()) <= 2 / 255 + 1e-6
    assert abs(float(sixteen.mean())) < 0.01 and float(sixteen.min()) == -1.0 and float(sixteen.max()) == 1.0
    reliability_table.record("inputs", "read_image", "16-bit grey PNG (ramp)",
                             f"scaled: mean {float(sixteen.mean()):+.3f} (8-bit copy {float(eight.mean()):+.3f}), "
                             f"max |diff| {float((sixteen - eight).abs().max()):.4f}")


def test_transparency_is_composited_on_the_stated_background(tmp_path):
    from PIL import Image

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white ...
    rgba[0, :, 3] = 255  # ... opaque in the first row, half transparent in the second, transparent elsewhere
    rgba[1, :, 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    black = read_image(tmp_path / "alpha.png", mode="L")[0]
    white = read_image(tmp_path / "alpha.png", mode="L", background=1.0)[0]
    assert torch.all(black[0] == 1.0) and torch.all(black[2:] == -1.0)  # default background: black (-1)
    assert torch.allclose(black[1], torch.full((4,), 128 / 255 * 1.0 + (1 - 128 / 255) * -1.0), atol=1e-6)
    assert torch.all(white == 1.0)
    with pytest.raises(ValueError, match=r"background must be in \[-1, 1\]"):
        read_image(tmp_path / "alpha.png", background=2.0)
    reliability_table.record("inputs", "read_image / negation build --background", "transparent white PNG",
                             "composited on the background: -1 (black, default) or --background")


def test_several_frames_give_a_warning_naming_the_file(tmp_path):
    from PIL import Image

    frames = [Image.new("L", (28, 28), v) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    report = build_from_folder("fashion-t2i", [tmp_path / "anim.gif"], tmp_path / "n.safetensors", progress=False)
    note = report.warnings[str(tmp_path / "anim.gif")]
    assert note == f"{tmp_path / 'anim.gif'} has 2 frames; the first one is used"
    assert NegationSet.load(tmp_path / "n.safetensors").metadata["warnings"] == report.warnings
    batch = next(iter_image_batches([tmp_path / "anim.gif"], 1, mode="L"))
    assert list(batch.warnings) == [str(tmp_path / "anim.gif")] and float(batch.images.max()) == -1.0  # frame 0: black
    reliability_table.record("inputs", "negation build", "animated GIF (2 frames)", "first frame, warning: " + note)


# ------------------------------------------------------------------------ item 7: one bad file is skipped
def test_a_bomb_and_a_broken_stream_are_skipped_by_name(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        _grey(folder / f"{i}.png", seed=i)
    bomb = _raw_png(folder / "bomb.png", 20000, 20000, zlib.compress(b"\0" * 100))
    broken = _raw_png(folder / "broken.png", 28, 28, b"not a zlib stream")
    report = build_from_folder("fashion-t2i", folder, tmp_path / "n.safetensors", progress=False)
    assert report.count == 3 and set(report.skipped) == {str(bomb), str(broken)}
    assert "decompression bomb" in report.skipped[str(bomb)] and "broken data stream" in report.skipped[str(broken)]
    with pytest.raises(ImageReadError, match="bomb.png"):
        build_from_folder("fashion-t2i", folder, tmp_path / "s.safetensors", strict=True, progress=False)
    for name, path in (("PNG declaring 20000x20000", bomb), ("PNG with a broken zlib stream", broken)):
        reliability_table.record("inputs", "negation build (no --strict)", name, "skipped: " + report.skipped[str(path)])


# ----------------------------------------------------------- issue 20 item 6: negation build's own errors
def test_negation_build_errors_and_wording(tmp_path, capsys):
    folder = tmp_path / "plots"
    folder.mkdir()
    for i in range(3):
        _grey(folder / f"plot{i}.png", size=(64, 48), seed=i)
    _grey(folder / "square.png")
    cases = []
    code = main(["negation", "build", "--model", "fashion-t2i", "--images", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"safe-denoiser negation build: error: no such folder: {tmp_path / 'missing'}"
    cases.append(("--images <missing folder>", f"exit {code}: {err}"))

    code = main(["negation", "build", "--model", "fashion-t2i", "--images", str(folder), "--out",
                 str(tmp_path / "plots.safetensors")])
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert code == 0 and warning == ["warning: 3 of 4 images have another aspect ratio than the model's 28x28 and are "
                                     "stretched: plot0.png 64x48, plot1.png 64x48, plot2.png 64x48"]
    assert captured.out.splitlines()[0] == f"wrote 4 images (negation set, pixels) to {tmp_path / 'plots.safetensors'}"
    cases.append(("--images <plots, 64x48> (pixel pipeline 28x28)", warning[0]))
    cases.append(("pixel set: what the summary calls the items", captured.out.splitlines()[0]))

    code = main(["negation", "build", "--model", "fashion-t2i", "--images", str(folder / "square.png"), "--out",
                 str(tmp_path / "allowed.safetensors"), "--role", "reference"])
    captured = capsys.readouterr()
    assert code == 0 and "negation" not in (captured.out + captured.err).replace(str(tmp_path), "<tmp>")
    assert captured.out.startswith("wrote 1 image (reference set of allowed images, pixels)")
    assert "encoding allowed images" in captured.err
    assert NegationSet.load(tmp_path / "allowed.safetensors").metadata["role"] == "reference"
    cases.append(("--role reference", captured.out.strip()))
    for case, outcome in cases:
        reliability_table.record("inputs", "safe-denoiser negation build", case, outcome)


def test_latent_sets_are_called_latents(tmp_path):
    from safedenoiser.pipelines.negation_build import BuildReport

    assert BuildReport(tmp_path / "n", 5, space="vae latents").summary().startswith("wrote 5 latents (negation set")
    assert BuildReport(tmp_path / "n", 5, space="pixels").summary().startswith("wrote 5 images (negation set")


# --------------------------------------------------------------- issue 20 item 7: sharded, resumable builds
def _random_encoder():
    """A fixed random conv net: batch composition must not change any bit of the merged set."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(4, 2, 3, stride=2, padding=1))
    return lambda images: net(images)


def test_sharded_build_is_bit_identical_and_resumes(tmp_path):
    paths = [_grey(tmp_path / f"{i:02d}.png", seed=i) for i in range(11)]
    encode = _random_encoder()
    common = dict(batch_size=3, size=28, mode="L", progress=False)
    single = build_negation_set(paths, encode, tmp_path / "single.safetensors", **common)
    out = tmp_path / "sharded.safetensors"
    first = build_negation_set(paths, encode, out, rank=1, world_size=2, **common)  # batches 1, 3 of 0..3
    assert not first.merged and not out.exists() and first.batches == 2
    last = build_negation_set(paths, encode, out, rank=0, world_size=2, **common)
    assert last.merged and last.count == 11
    a, b = NegationSet.load(tmp_path / "single.safetensors"), NegationSet.load(out)
    assert a.content_hash == b.content_hash and torch.equal(a.data, b.data) and a.metadata["images"] == b.metadata["images"]
    # resumable: a rank's finished parts are reused by a later one-process run
    again = tmp_path / "again.safetensors"
    build_negation_set(paths, encode, again, rank=1, world_size=2, **common)
    resumed = build_negation_set(paths, encode, again, **common)
    assert resumed.resumed_batches == 2 and NegationSet.load(again).content_hash == a.content_hash
    assert single.count == 11
    reliability_table.record("inputs", "build_negation_set", "11 images, batches of 3, ranks 1 then 0 of 2",
                             "merged by the last rank; content hash = one-process build; a rerun reused 2 parts")


SHARD_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from test_reliability_inputs import _random_encoder
from safedenoiser.pipelines.generate import rank_and_world
from safedenoiser.pipelines.negation_build import build_negation_set
from pathlib import Path
rank, world = rank_and_world()
paths = sorted(Path(sys.argv[2]).glob("*.png"))
report = build_negation_set(paths, _random_encoder(), sys.argv[3], batch_size=2, size=28, mode="L", progress=False,
                            rank=rank, world_size=world)
print(report.summary())
"""


def test_two_processes_merge_into_the_one_process_file(tmp_path):
    """RANK 0 and 1 of WORLD_SIZE 2 started together (as torchrun does): one file, bit-identical to one process."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [_grey(folder / f"{i}.png", seed=i) for i in range(7)]
    build_negation_set(paths, _random_encoder(), tmp_path / "one.safetensors", batch_size=2, size=28, mode="L",
                       progress=False)
    out = tmp_path / "two.safetensors"
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, str(Path(__file__).parent), str(folder), str(out)],
                              env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = [o[0].strip() for o in outputs]
    assert sum(s.startswith("wrote 7 latents (negation set") for s in said) == 1, said
    one, two = NegationSet.load(tmp_path / "one.safetensors"), NegationSet.load(out)
    assert one.content_hash == two.content_hash and torch.equal(one.data, two.data) and one.metadata == two.metadata
    assert not out.with_name(out.name + ".parts").exists()
    reliability_table.record("inputs", "negation build under RANK 0 / 1, WORLD_SIZE 2 (two processes at once)",
                             "7 images, batches of 2, a conv encoder",
                             "one file, content hash and metadata equal to the one-process build")


def test_negation_build_reads_rank_and_world_size_from_the_environment(tmp_path, monkeypatch, capsys):
    paths = [_grey(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "n.safetensors"
    assert main(["negation", "build", "--model", "fashion-t2i", "--images", *map(str, paths), "--out", str(out),
                 "--batch-size", "1"]) == 0
    said = capsys.readouterr().out.strip()
    assert said == f"rank 1 of 2: encoded its 2 batches; the rank that finishes last writes the negation set to {out}"
    assert sorted(p.name for p in out.with_name(out.name + ".parts").glob("part-*")) == \
        ["part-0000001.safetensors", "part-0000003.safetensors"]
    monkeypatch.setenv("RANK", "0")
    assert main(["negation", "build", "--model", "fashion-t2i", "--images", *map(str, paths), "--out", str(out),
                 "--batch-size", "1"]) == 0
    assert capsys.readouterr().out.startswith("wrote 4 images") and len(NegationSet.load(out)) == 4


# ----------------------------------------------------------------------------------- item 11: messages
def test_reference_set_messages_say_reference(tmp_path):
    from safetensors.torch import save_file

    from safedenoiser.methods import ReferenceSet, ReferenceSetError
    from safedenoiser.negation_file import content_hash, file_header

    data = torch.randn(5, 8)
    data[0, 0] = float("nan")
    save_file({"data": data}, str(tmp_path / "ref.safetensors"),
              metadata=file_header(content_hash(data), space="data", source="", metadata={"role": "reference"}))
    with pytest.raises(ReferenceSetError, match="^reference set contains NaN or infinite values$"):
        ReferenceSet.load(tmp_path / "ref.safetensors")
    with pytest.raises(NegationSetError, match="^reference set not found"):
        ReferenceSet.load(tmp_path / "missing.safetensors")
    reliability_table.record("inputs", "ReferenceSet.load", "NaN in a reference file", "reference set contains NaN or "
                             "infinite values")


def test_a_set_on_another_device_is_one_line():
    from safedenoiser.methods import ReferenceSet

    ref = ReferenceSet(torch.randn(6, 8, device="meta"), validate=False)
    with pytest.raises(NegationSetError, match=r"^queries are on cpu but the reference set is on meta; move it with "
                                               r"\.to\('cpu'\)$"):
        ref.moments(torch.randn(2, 8), 1.0)
    reliability_table.record("inputs", "ReferenceSet.moments / NegationSet.moments", "set on another device",
                             "queries are on cpu but the reference set is on meta; move it with .to('cpu')")


def test_text_files_bom_and_latin1(tmp_path):
    from safedenoiser.textio import TextFileError, read_text_file

    (tmp_path / "bom.csv").write_bytes("prompt,seed\nkhakis,1\n".encode("utf-8-sig"))
    (tmp_path / "latin1.csv").write_bytes("prompt\ncafé trousers\n".encode("latin-1"))
    assert read_text_file(tmp_path / "bom.csv") == "prompt,seed\nkhakis,1\n"
    with pytest.raises(TextFileError) as err:
        read_text_file(tmp_path / "latin1.csv")
    assert str(err.value).startswith(f"{tmp_path / 'latin1.csv'} is not UTF-8 text (byte 10 is 0xe9)")
    reliability_table.record("inputs", "read_text_file (prompt files)", "UTF-8 CSV with a byte-order mark",
                             "read; the BOM is removed")
    reliability_table.record("inputs", "read_text_file (prompt files)", "Latin-1 CSV", str(err.value))
