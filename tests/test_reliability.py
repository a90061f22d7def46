"""Reliability: a fuzz table over the public entry points and the CLI commands (every bad input gets a clear
error naming it, never a traceback or a silent NaN), code that must not run, shipped files that must not be
written, stale results that must be refused. Each case is recorded for the reliability table
(tests/reliability_table.py; set SAFEDENOISER_RELIABILITY_TABLE=path to write it)."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

import reliability_table  # noqa: E402

from safedenoiser import NegationSet, NegationSetError, fileio  # noqa: E402
from safedenoiser.cli import main  # noqa: E402
from safedenoiser.imageio import ImageReadError, list_images, read_image  # noqa: E402
from safedenoiser.kernels import batch_sigma, kernel_moments  # noqa: E402
from safedenoiser.methods import make_correction  # noqa: E402

ROOT = os.geteuid() == 0  # root reads files whatever their mode: the "unreadable" cases need another user


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    reliability_table.flush()


def _png(path: Path, size: int = 16, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad and good files shared by the cases."""
    root = tmp_path_factory.mktemp("files")
    good = NegationSet(torch.randn(6, 4, 8, 8))
    good.save(root / "neg.safetensors")
    raw = (root / "neg.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(3)}, str(root / "foreign.safetensors"))
    (root / "text.safetensors").write_text("hello")
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("x")
    _png(root / "ok.png")
    (root / "truncated.png").write_bytes((root / "ok.png").read_bytes()[:40])
    (root / "prompts_empty.txt").write_text("\n\n")
    (root / "prompts.txt").write_text("a cat\na dog\n")
    (root / "no_prompt_column.csv").write_text("text,seed\nx,1\n")
    (root / "bad_seed.csv").write_text("prompt,seed\nx,abc\n")
    return root


# ----------------------------------------------------------------------------------------------- the fuzz table
def _cases(f: Path):
    x = torch.randn(3, 8)
    pts = torch.randn(5, 8)
    neg = NegationSet(torch.randn(5, 8))
    paper = make_correction(neg, "paper")
    return [
        # kernels
        ("kernel_moments", "no points (N = 0)", lambda: kernel_moments(x, pts[:0], 1.0), ValueError, "at least one point"),
        ("kernel_moments", "x 1-D", lambda: kernel_moments(x[0], pts, 1.0), ValueError, r"x \(B, D\)"),
        ("kernel_moments", "dimension mismatch", lambda: kernel_moments(x, pts[:, :4], 1.0), ValueError, r"x \(B, D\)"),
        ("kernel_moments", "integer points", lambda: kernel_moments(x, pts.long(), 1.0), ValueError, "floating point"),
        ("kernel_moments", "sigma = 0", lambda: kernel_moments(x, pts, 0.0), ValueError, "positive and finite"),
        ("kernel_moments", "sigma = -1", lambda: kernel_moments(x, pts, -1.0), ValueError, "positive and finite"),
        ("kernel_moments", "sigma = NaN", lambda: kernel_moments(x, pts, math.nan), ValueError, "positive and finite"),
        ("kernel_moments", "sigma = inf", lambda: kernel_moments(x, pts, math.inf), ValueError, "positive and finite"),
        ("kernel_moments", "sigma = 1e-20 (float32)", lambda: kernel_moments(x, pts, 1e-20), ValueError, "below"),
        ("kernel_moments", "sigma = 1e300 (overflows float32)", lambda: kernel_moments(x, pts, 1e300), ValueError,
         "positive and finite"),
        ("kernel_moments", "sigma of wrong shape (2,) for B = 3", lambda: kernel_moments(x, pts, torch.ones(2)), ValueError,
         "shape"),
        ("kernel_moments", "sigma a string", lambda: kernel_moments(x, pts, "1"), ValueError, "number or a tensor"),
        ("batch_sigma", "complex sigma", lambda: batch_sigma(torch.ones(3, dtype=torch.complex64), 3, torch.float32, "cpu"),
         ValueError, "real"),
        # negation sets
        ("NegationSet", "empty (0, 8)", lambda: NegationSet(torch.empty(0, 8)), NegationSetError, "empty"),
        ("NegationSet", "zero-sized items (4, 0)", lambda: NegationSet(torch.empty(4, 0)), NegationSetError, "zero-sized"),
        ("NegationSet", "1-D tensor", lambda: NegationSet(torch.ones(4)), NegationSetError, "shape"),
        ("NegationSet", "NaN item", lambda: NegationSet(torch.tensor([[0.0, math.nan]])), NegationSetError, "NaN"),
        ("NegationSet", "inf item", lambda: NegationSet(torch.tensor([[0.0, math.inf]])), NegationSetError, "infinite"),
        ("NegationSet", "integer tensor", lambda: NegationSet(torch.ones(3, 2, dtype=torch.long)), NegationSetError,
         "floating point"),
        ("NegationSet", "a list", lambda: NegationSet([[1.0, 2.0]]), NegationSetError, "torch.Tensor"),
        ("NegationSet.load", "missing file", lambda: NegationSet.load(f / "missing.safetensors"), NegationSetError, "not found"),
        ("NegationSet.load", "truncated file", lambda: NegationSet.load(f / "truncated.safetensors"), NegationSetError,
         "cannot read"),
        ("NegationSet.load", "foreign safetensors", lambda: NegationSet.load(f / "foreign.safetensors"), NegationSetError,
         "no 'data' tensor"),
        ("NegationSet.load", "text file", lambda: NegationSet.load(f / "text.safetensors"), NegationSetError, "cannot read"),
        ("NegationSet.load", "a folder", lambda: NegationSet.load(f / "empty_dir"), NegationSetError, "not found"),
        # corrections
        ("Correction", "x0 on another device (meta)", lambda: paper(x.to("meta"), 1.0, x.to("meta")), NegationSetError,
         "negation set is on cpu"),
        ("Correction", "x and x0 of different shapes", lambda: paper(x[:2], 1.0, x), ValueError, "same shape"),
        ("Correction", "x0 of wrong dimension", lambda: paper(x[:, :4], 1.0, x[:, :4]), NegationSetError, "shape"),
        ("Correction", "integer x0", lambda: paper(x.long(), 1.0, x.long()), NegationSetError, "floating point"),
        ("Correction", "sigma = NaN", lambda: paper(x, math.nan, x), ValueError, "positive and finite"),
        ("Correction", "sigma = 1e-20", lambda: paper(x, 1e-20, x), ValueError, "below"),
        ("make_correction", "paper eta = NaN", lambda: make_correction(neg, "paper", eta=math.nan), ValueError, "eta"),
        ("make_correction", "paper max_weight = 0", lambda: make_correction(neg, "paper", max_weight=0.0), ValueError,
         "max_weight"),
        ("make_correction", "reference bandwidth = NaN", lambda: make_correction(neg, "reference", bandwidth=math.nan),
         ValueError, "bandwidth"),
        ("make_correction", "unknown mode", lambda: make_correction(neg, "nope"), ValueError, "unknown"),
        # files
        ("list_images", "empty folder", lambda: list_images(f / "empty_dir"), ImageReadError, "no image files"),
        ("list_images", "a file, not a folder", lambda: list_images(f / "a_file"), FileNotFoundError, "not found"),
        ("read_image", "truncated PNG", lambda: read_image(f / "truncated.png"), ImageReadError, "cannot read image"),
        ("read_image", "wrong size", lambda: read_image(f / "ok.png", size=8), ImageReadError, "expected 8x8"),
        ("read_prompts", "missing file", lambda: _read_prompts(f / "missing.csv"), FileNotFoundError, "not found"),
        ("read_prompts", "only blank lines", lambda: _read_prompts(f / "prompts_empty.txt"), ValueError, "no prompts"),
        ("read_prompts", "CSV without a prompt column", lambda: _read_prompts(f / "no_prompt_column.csv"), ValueError,
         "no 'prompt' column"),
        ("read_prompts", "CSV with a bad seed", lambda: _read_prompts(f / "bad_seed.csv"), ValueError, "bad seed"),
        ("load_state", "truncated state.pt", lambda: _load_state(f / "truncated.png"), ValueError, "not a readable training state"),
        ("load_state", "foreign file (safetensors)", lambda: _load_state(f / "neg.safetensors"), ValueError,
         "training state"),
    ]


def _read_prompts(path):
    from safedenoiser.pipelines.generate import read_prompts

    return read_prompts(path)


def _load_state(path):
    from safedenoiser.zoo.images.train import load_state

    return load_state(path)


def test_fuzz_table(files):
    failures = []
    for entry, case, fn, error, match in _cases(files):
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - the table records whatever each case raises
            ok = isinstance(err, error) and __import__("re").search(match, str(err))
            reliability_table.record("library", entry, case, f"{type(err).__name__}: {err}")
            if not ok:
                failures.append(f"{entry} / {case}: {type(err).__name__}: {err}")
        else:
            failures.append(f"{entry} / {case}: accepted")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["paper", "calibrated", "reference"])
def test_every_mode_is_finite_for_every_dtype(dtype, mode):
    """Weights near max_weight (1e6) at tiny sigma: the output is clipped to the dtype's range, never inf / NaN."""
    from safedenoiser.methods import Calibration

    gen = torch.Generator().manual_seed(0)
    data = torch.randn(20, 64, generator=gen)
    neg = NegationSet(data)
    knobs = {}
    if mode == "calibrated":
        bank = torch.cat([data[:5] + 0.01 * torch.randn(5, 64, generator=gen), 3 + torch.randn(40, 64, generator=gen)])
        knobs = {"calibration": Calibration.from_bank(bank, neg), "max_weight": 1e6}
    correction = make_correction(neg, mode, **knobs)
    worst = 0.0
    for sigma in (1e-6, 1e-3, 0.1, 1.0, 1e3, 1e6):
        x = (data[:4] + sigma * torch.randn(4, 64, generator=gen)).to(dtype)
        x0 = (50 * torch.randn(4, 64, generator=gen)).to(dtype)
        out = correction(x, sigma, x0)
        assert out.dtype == dtype and torch.isfinite(out).all(), (mode, dtype, sigma)
        worst = max(worst, float(out.abs().max()))
    reliability_table.record("numerics", f"make_correction('{mode}')", f"{str(dtype)[6:]}, sigma 1e-6 .. 1e6, |x0| ~ 50",
                             f"finite (largest |x0'| {worst:.3g})")


# ------------------------------------------------------------------------------------------ CLI: one line each
def _cli_cases(f: Path, m: Path, tmp: Path):
    gen = ["generate", "--model", str(m), "--prompts", str(f / "prompts.txt"), "--out", str(tmp / "gen"), "--steps", "1",
           "--height", "16", "--width", "16"]
    build = ["negation", "build", "--model", str(m), "--images", str(f / "ok.png"), "--out", str(tmp / "b.safetensors")]
    train = ["train", "--data", str(tmp / "train_data"), "--out", str(tmp / "train"), "--image-size", "8", "--widths", "8"]
    return [
        ("train --steps 0", train + ["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
        ("train --steps -1", train + ["--steps", "-1"], "argument --steps"),
        ("train --batch-size 0", train + ["--batch-size", "0"], "argument --batch-size"),
        ("train --checkpoint-every 0", train + ["--checkpoint-every", "0"], "argument --checkpoint-every"),
        ("train --time-limit -1", train + ["--time-limit", "-1"], "argument --time-limit"),
        ("train --threads 0", train + ["--threads", "0"], "argument --threads"),
        ("train --lr nan", train + ["--lr", "nan"], "argument --lr"),
        ("train --widths 8,x", train + ["--widths", "8,x"], "argument --widths"),
        ("train: state.pt is garbage", train + ["--steps", "2"], "not a readable training state"),
        ("train-judge (no --out)", ["train-judge"], "give --out FILE"),
        ("train-judge --out <shipped judge>", ["train-judge", "--assets-only", "--out", str(_shipped())],
         "would overwrite a shipped asset"),
        ("train-judge --memorise-checkpoint <garbage>", ["train-judge", "--assets-only", "--out", str(tmp / "j.safetensors"),
                                                          "--memorise-checkpoint", str(f / "text.safetensors")],
         "cannot read the memorise checkpoint"),
        ("generate --steps -1", gen + ["--steps", "-1"], "argument --steps"),
        ("generate --steps 0", gen + ["--steps", "0"], "argument --steps"),
        ("generate --log-threshold nan", gen + ["--log-threshold", "nan"], "argument --log-threshold"),
        ("generate --guidance nan", gen + ["--guidance", "nan"], "argument --guidance"),
        ("generate --height 0", gen + ["--height", "0"], "argument --height"),
        ("generate --batch-size 0", gen + ["--batch-size", "0"], "argument --batch-size"),
        ("generate --window-t -5", gen + ["--window-t", "-5"], "argument --window-t"),
        ("generate --eta -1", gen + ["--eta", "-1"], "argument --eta"),
        ("generate --max-weight 0", gen + ["--max-weight", "0"], "argument --max-weight"),
        ("generate --bandwidth inf", gen + ["--bandwidth", "inf"], "argument --bandwidth"),
        ("generate --device foo", gen + ["--device", "foo"], "argument --device"),
        ("generate --prompts <missing>", gen + ["--prompts", str(f / "missing.txt")], "prompt file not found"),
        ("generate --prompts <blank lines>", gen + ["--prompts", str(f / "prompts_empty.txt")], "no prompts"),
        ("generate --model <empty folder>", gen + ["--model", str(f / "empty_dir")], "cannot load a diffusers pipeline"),
        ("generate --scheduler UNet2DModel", gen + ["--scheduler", "UNet2DModel"], "not a diffusers scheduler"),
        ("generate --window-t 5000", gen + ["--negation", str(f / "neg.safetensors"), "--window-t", "5000"],
         "outside the scheduler's training timesteps"),
        ("generate --negation <foreign safetensors>", gen + ["--negation", str(f / "foreign.safetensors")], "no 'data' tensor"),
        ("generate --negation <truncated>", gen + ["--negation", str(f / "truncated.safetensors")], "cannot read negation set"),
        ("generate --out <an existing file>", gen + ["--out", str(f / "a_file")], "is an existing file"),
        ("negation build --batch-size 0", build + ["--batch-size", "0"], "argument --batch-size"),
        ("negation build --resolution 0", build + ["--resolution", "0"], "argument --resolution"),
        ("negation build --images <empty folder>", build[:4] + ["--images", str(f / "empty_dir")] + build[6:],
         "no image files"),
        ("negation build --images <truncated PNG only>", build[:4] + ["--images", str(f / "truncated.png")] + build[6:],
         "none of the 1 images could be read"),
        ("negation build --out <a folder>", build[:6] + ["--out", str(f / "empty_dir")], "is a folder"),
        ("bench images --samples 0", ["bench", "images", "uncond", "--samples", "0"], "argument --samples"),
        ("bench kernel --sizes 0", ["bench", "kernel", "--sizes", "0", "--out", str(tmp / "k")], "argument --sizes"),
        ("evaluate --threshold 2", ["evaluate", "--run", str(tmp), "--threshold", "2"], "argument --threshold"),
        ("train --plateau 0.03 (no --eval-every)", ["train", "--out", str(tmp / "p"), "--plateau", "0.03"],
         "plateau stopping needs an FD curve"),
        ("train --eval-every 5 --data mnist", ["train", "--out", str(tmp / "q"), "--data", "mnist", "--eval-every", "5"],
         "eval_every needs --data fashion-mnist"),
        ("bench toy --family nope", ["bench", "toy", "--family", "nope"], "argument --family"),
        ("bench toy --cut median", ["bench", "toy", "--cut", "median"], "argument --cut"),
    ]


def _shipped() -> Path:
    from safedenoiser.zoo.images.assets import JUDGE_ASSET

    return JUDGE_ASSET


def test_cli_errors_are_one_line(files, model_dir, tmp_path, capsys):
    data = tmp_path / "train_data"
    data.mkdir()
    for i in range(4):
        _png(data / f"{i}.png", size=8, seed=i)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "state.pt").write_bytes(b"PK\x03\x04 not a zip")
    failures = []
    for case, argv, expected in _cli_cases(files, model_dir, tmp_path):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if line.startswith("safe-denoiser")]  # not the progress bars
        reliability_table.record("cli", "safe-denoiser " + " ".join(case.split(":")[0].split(" ")[: 2 if case.startswith(("negation", "bench")) else 1]),
                                 case, f"exit {code}: {lines[-1] if lines else '(nothing)'}")
        if code != 2 or len(lines) != 1 or expected not in lines[0] or "Traceback" in err:
            failures.append(f"{case}: exit {code}: {err}")
    assert not failures, "\n".join(failures)


def test_debug_flag_shows_the_traceback(files, tmp_path):
    argv = ["generate", "--model", str(files / "empty_dir"), "--prompts", str(files / "prompts.txt"), "--out", str(tmp_path)]
    with pytest.raises(FileNotFoundError, match="cannot load a diffusers pipeline"):
        main(["--debug", *argv])


def test_bench_kernel_quick_keeps_explicit_flags(monkeypatch, tmp_path, capsys):
    from safedenoiser.bench import kernel

    seen = {}
    monkeypatch.setattr(kernel, "run_benchmark", lambda cfg: seen.setdefault("cfg", cfg) and {})
    monkeypatch.setattr(kernel, "markdown", lambda report: "")
    assert main(["bench", "kernel", "--quick", "--sizes", "300", "--repeats", "1", "--out", str(tmp_path)]) == 0
    cfg = seen["cfg"]
    assert cfg.sizes == (300,) and cfg.repeats == 1 and cfg.dims == kernel.QUICK["dims"]
    reliability_table.record("cli", "safe-denoiser bench kernel", "--quick --sizes 300 --repeats 1",
                             f"explicit flags kept: sizes {cfg.sizes}, repeats {cfg.repeats}; quick dims {cfg.dims}")


@pytest.mark.skipif(not ROOT or not hasattr(os, "fork"), reason="needs root (to drop to user nobody) and fork")
def test_unreadable_files_as_another_user(files, request_cleanup):
    """Root reads any file, so the unreadable cases run in a forked child that drops to user ``nobody``."""
    import io
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    import shutil
    import tempfile

    box = Path(tempfile.mkdtemp(prefix="safedenoiser-unreadable-"))  # pytest's tmp_path sits in a 0700 folder
    request_cleanup.append(lambda: shutil.rmtree(box, ignore_errors=True))
    (box / "neg.safetensors").write_bytes((files / "neg.safetensors").read_bytes())
    (box / "prompts.txt").write_text("a\n")
    for path in (box / "neg.safetensors", box / "prompts.txt"):
        os.chmod(path, 0o000)
    os.chmod(box, 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        result = {}
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                NegationSet.load(box / "neg.safetensors")
                result["load"] = "accepted"
            except Exception as err:  # noqa: BLE001
                result["load"] = f"{type(err).__name__}: {err}"
            sys.stderr = io.StringIO()
            result["code"] = main(["generate", "--model", "x", "--prompts", str(box / "prompts.txt"), "--out", str(box / "o")])
            result["err"] = sys.stderr.getvalue()
        finally:
            os.write(write, json.dumps(result).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as handle:
        result = json.loads(handle.read() or "{}")
    os.waitpid(pid, 0)
    assert "not readable (permission denied)" in result["load"], result
    lines = result["err"].strip().splitlines()
    assert result["code"] == 2 and len(lines) == 1 and "Permission denied" in lines[0], result
    reliability_table.record("library", "NegationSet.load", "file mode 000 (as user nobody)", result["load"])
    reliability_table.record("cli", "safe-denoiser generate", "--prompts <mode 000> (as user nobody)",
                             f"exit {result['code']}: {lines[0]}")


@pytest.fixture()
def request_cleanup():
    actions = []
    yield actions
    for action in actions:
        action()


# ------------------------------------------------------------------------------------------------- security
class _Marker:
    """A pickle payload: unpickling it would call ``Path.touch`` on the marker file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_malicious_state_pt_does_not_run(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        _png(data / f"{i}.png", size=8, seed=i)
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model": _Marker(marker), "step": 0}, out / "state.pt")
    code = main(["train", "--data", str(data), "--out", str(out), "--image-size", "8", "--widths", "8", "--steps", "1",
                 "--channels", "3"])
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "unpickling ran the payload"
    assert code == 2 and "not a readable training state" in err and len(err.splitlines()) == 1
    reliability_table.record("security", "safe-denoiser train --out", "state.pt whose pickle calls Path.touch(marker)",
                             f"not run (marker absent); exit {code}: {err}")


def _one_error_line(stderr: str) -> str:
    """The error line of a failed command (progress bars aside); exactly one, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("safe-denoiser")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ----------------------------------------------------------------------------------------- shipped assets
def test_train_judge_never_writes_shipped_assets(tmp_path, monkeypatch, capsys):
    from safedenoiser.zoo.images import assets
    from safedenoiser.zoo.images import train as train_module

    written = []
    monkeypatch.setattr(assets, "build_eval_assets", lambda evaluator, path, subset_index=None: written.append(Path(path)))
    shipped = {p: (p.stat().st_mtime_ns if p.exists() else None) for p in assets.shipped_files()}
    if not assets.JUDGE_ASSET.is_file():
        pytest.skip("no shipped judge in this checkout")
    out = tmp_path / "judge" / "j.safetensors"
    assert main(["train-judge", "--assets-only", "--out", str(out)]) == 0
    assert written == [out.with_name(assets.EVAL_ASSET.name)]
    assert {p: (p.stat().st_mtime_ns if p.exists() else None) for p in assets.shipped_files()} == shipped
    assert train_module  # the command module under test
    capsys.readouterr()
    reliability_table.record("shipped files", "safe-denoiser train-judge", "--assets-only --out X",
                             f"evaluation assets written to {written[0].parent.name}/{written[0].name}; shipped files untouched")


# ------------------------------------------------------------------------------------------- stale results
def test_generate_refuses_other_settings_in_the_same_folder(model_dir, files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["generate", "--model", str(model_dir), "--prompts", str(files / "prompts.txt"), "--out", str(out),
            "--steps", "1", "--height", "16", "--width", "16", "--negation", str(files / "neg.safetensors"),
            "--mode", "reference"]
    assert main(argv) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    for changed, what in ((["--steps", "2"], "steps"), (["--scale", "0.3"], "parameters.scale"),
                          (["--dtype", "bfloat16"], "dtype")):
        assert main(argv + changed) == 2
        err = _one_error_line(capsys.readouterr().err)
        assert what in err and "other settings" in err, err
        reliability_table.record("stale results", "safe-denoiser generate", f"rerun into the same --out with {' '.join(changed)}",
                                 err)
    other = NegationSet(torch.randn(6, 4, 8, 8))
    other.save(tmp_path / "other.safetensors")
    assert main(argv[:-4] + ["--negation", str(tmp_path / "other.safetensors"), "--mode", "reference"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "negation_hash" in err
    reliability_table.record("stale results", "safe-denoiser generate", "rerun with another negation set", err)
    (files / "prompts2.txt").write_text("a bird\na dog\n")
    assert main([*argv[:4], str(files / "prompts2.txt"), *argv[5:]]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "item 0" in err and "a bird" in err
    reliability_table.record("stale results", "safe-denoiser generate", "rerun after the prompt of item 0 changed", err)
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == before
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert records[0]["parameters"]["log_threshold"] == "-inf"  # strict JSON: no bare -Infinity / NaN


def test_negation_build_sweeps_its_output_temporaries_left_by_a_kill(tmp_path):
    """A kill while the output set itself was written leaves ``.OUT.HOST.PID.*.tmp`` beside it; the next build removes
    it, and leaves alone a dead process's temporary of another file in that folder."""
    from safedenoiser.pipelines.negation_build import build_negation_set

    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [_png(folder / f"{i}.png", size=4, seed=i) for i in range(3)]
    out = tmp_path / "set.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, other = (fileio.temp_path(p) for p in (out, tmp_path / "notes.txt"))
    mine, other = (p.with_name(p.name.replace(f".{os.getpid()}.", f".{dead.pid}.")) for p in (mine, other))
    for path in (mine, other):
        path.write_bytes(b"half")
    build_negation_set(paths, lambda images: images.flatten(1)[:, :5].clone(), out, batch_size=2, progress=False)
    assert not mine.exists() and other.exists() and len(NegationSet.load(out)) == 3
    reliability_table.record("killed runs", "build_negation_set", "rerun after a kill while the output was written",
                             "the output's temporary removed; other files' temporaries kept")


def test_negation_build_redoes_batches_whose_images_changed(tmp_path):
    from safedenoiser.pipelines.negation_build import build_negation_set

    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [_png(folder / f"{i}.png", size=4, seed=i) for i in range(4)]
    encode = lambda images: images.flatten(1)[:, :5].clone()  # noqa: E731
    out = tmp_path / "set.safetensors"
    calls = []

    def dying(images):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(images)

    with pytest.raises(KeyboardInterrupt):
        build_negation_set(paths, dying, out, batch_size=2, size=4, progress=False)
    _png(paths[0], size=4, seed=99)  # the image of the finished batch changes before the rerun
    report = build_negation_set(paths, encode, out, batch_size=2, size=4, progress=False)
    fresh = build_negation_set(paths, encode, tmp_path / "fresh.safetensors", batch_size=2, size=4, progress=False)
    assert report.resumed_batches == 0 and torch.equal(NegationSet.load(out).data, NegationSet.load(fresh.path).data)
    reliability_table.record("stale results", "build_negation_set", "resume after an image of a finished batch changed",
                             "the batch is encoded again (its size / mtime stamp differs); result equals a fresh build")
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        build_negation_set(paths, dying, tmp_path / "c.safetensors", batch_size=2, size=4, progress=False)
    with pytest.raises(NegationSetError, match="--no-resume") as info:
        build_negation_set(paths, encode, tmp_path / "c.safetensors", batch_size=1, size=4, progress=False)
    assert "batch_size" in str(info.value)
    reliability_table.record("stale results", "build_negation_set", "resume with another batch size", str(info.value))
    with pytest.raises(ImageReadError):
        build_negation_set([tmp_path / "missing.png"], encode, tmp_path / "d.safetensors", size=4, progress=False)
    assert not (tmp_path / "d.safetensors.parts").exists()
    reliability_table.record("smaller", "build_negation_set", "every image unreadable", "error; no .parts folder left")


# ------------------------------------------------------------------------------------------------ smaller items
def test_symlinked_class_folders_are_followed(tmp_path):
    from safedenoiser.zoo.images.data import load_folder

    real = tmp_path / "real"
    (real / "cats").mkdir(parents=True)
    (real / "dogs").mkdir(parents=True)
    _png(real / "cats" / "a.png", size=8)
    _png(real / "dogs" / "b.png", size=8, seed=1)
    root = tmp_path / "root"
    root.mkdir()
    (root / "cats").symlink_to(real / "cats")
    (root / "dogs").symlink_to(real / "dogs")
    (root / "dogs" / "loop").symlink_to(root)  # a cycle must not loop
    data = load_folder(root, size=8, channels=3)
    assert data.class_names == ("cats", "dogs") and data.labels.tolist() == [0, 1]
    reliability_table.record("smaller", "load_folder", "class folders that are symlinks (and a link cycle)",
                             f"followed: classes {data.class_names}, {len(data.labels)} images")


def test_outputs_follow_the_umask_and_temp_names_are_unique(tmp_path):
    old = os.umask(0o022)
    try:
        NegationSet(torch.randn(2, 3)).save(tmp_path / "a.safetensors")
        fileio.write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.safetensors": 0o644, "b.txt": 0o644}
    names = {fileio.temp_path(tmp_path / "x.png").name for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(".x.png.") and n.endswith(".tmp") for n in names)
    host = fileio._host()
    assert all(f".{host}.{os.getpid()}." in n for n in names)
    reliability_table.record("smaller", "NegationSet.save / fileio", "umask 022", "files 0644 (safetensors alone gives 0600)")
    reliability_table.record("smaller", "fileio.temp_path", "100 temporary names", "unique: .NAME.HOST.PID.RANDOM.tmp")


def test_generate_rerun_sweeps_temporaries_left_by_a_killed_run(model_dir, files, tmp_path, capsys):
    """A kill between writing and renaming ``records.jsonl`` (or an image, or a record) leaves ``.NAME.HOST.PID.*.tmp``;
    the next run in that folder removes those whose process is gone, wherever in the output folder they are."""
    out = tmp_path / "run"
    argv = ["generate", "--model", str(model_dir), "--prompts", str(files / "prompts.txt"), "--out", str(out),
            "--steps", "1", "--height", "16", "--width", "16"]
    assert main(argv) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [p.with_name(p.name.replace(f".{os.getpid()}.", f".{dead.pid}.")) for p in
            (fileio.temp_path(out / "records.jsonl"), fileio.temp_path(out / "images" / "00000.png"),
             fileio.temp_path(out / "records" / "00000.json"))]
    alive = fileio.temp_path(out / "settings.json")  # this process is alive: its temporary must stay
    for path in (*left, alive):
        path.write_bytes(b"half")
    assert main(argv) == 0
    capsys.readouterr()
    assert [p for p in left if p.exists()] == [] and alive.exists()
    reliability_table.record("killed runs", "safe-denoiser generate", "rerun after a kill left temporaries in OUT, "
                             "OUT/images, OUT/records", "temporaries of dead processes removed; live ones kept")


def test_generate_refuses_to_write_nan_images(tmp_path):
    """A pipeline whose output overflowed (NaN pixels, as float16 at weight 1e6 did) stops the run with an error
    naming the item; no black PNG is written and the items before it are kept."""
    from types import SimpleNamespace

    from safedenoiser.pipelines.generate import PromptItem, generate

    def pipe(prompts, generator, **kwargs):
        assert kwargs["output_type"] == "np"
        seed = generator[0].initial_seed()
        value = np.nan if seed == 2 else 0.5
        return SimpleNamespace(images=np.full((len(prompts), 4, 4, 3), value, dtype=np.float32))

    items = [PromptItem(i, f"p{i}", seed=i + 1) for i in range(3)]
    with pytest.raises(ValueError, match="item 1 .*NaN or infinite pixels") as info:
        generate(pipe, items, tmp_path / "out", steps=1, progress=False, rank=0, world_size=1)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["000000.png"]
    reliability_table.record("numerics", "generate()", "the pipeline returns NaN pixels for item 1 (float16 overflow)",
                             f"ValueError: {info.value}; item 0 kept, nothing written for item 1")
