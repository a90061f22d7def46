"""Kill and concurrency tests: SIGKILL ``generate``, ``negation build`` and ``train`` at random moments, rerun,
and check that nothing is lost, duplicated or half-written and that the result is bit-identical to an
uninterrupted run; two ``generate`` shards (RANK / WORLD_SIZE) at once write every item exactly once.

The runs are forked from the test process (torch and diffusers are already imported, so a kill costs no start-up)
and killed after a random delay drawn from ``[0, duration of the uninterrupted run]``; the seed is
SAFEDENOISER_KILL_SEED (default 0). Every run is recorded for the reliability table."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
if not hasattr(os, "fork"):
    pytest.skip("the kill tests fork", allow_module_level=True)
torch.set_num_threads(1)

import reliability_table  # noqa: E402
from tiny_pipelines import IMAGE_SIZE  # noqa: E402

from safedenoiser import NegationSet  # noqa: E402
from safedenoiser.cli import main  # noqa: E402

KILLS = int(os.environ.get("SAFEDENOISER_KILLS", 4))
SEED = int(os.environ.get("SAFEDENOISER_KILL_SEED", 0))


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    reliability_table.flush()


def _private_tqdm_lock() -> None:
    """tqdm's write lock holds a multiprocessing semaphore shared with the parent after fork: a child killed while
    holding it would leave the test process (and every later tqdm bar) blocked. Give the child its own lock."""
    import threading

    from tqdm import std

    lock = threading.RLock()
    classes, seen = [std.tqdm], set()
    while classes:  # every tqdm class that holds its own lock (tqdm.auto, diffusers' bars ...) gets the private one
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if cls is std.tqdm or "_lock" in vars(cls):
            cls._lock = lock
        classes.extend(cls.__subclasses__())


def _fork(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``safe-denoiser argv`` in a forked child (output discarded); returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.environ.update(env or {})
            _private_tqdm_lock()
            code = main(argv)
        finally:
            os._exit(code)
    return pid


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    pid = _fork(argv)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"uninterrupted run failed: {argv}"
    return time.perf_counter() - start


def _kill_runs(argv: list[str], duration: float, rng: random.Random, kills: int = KILLS) -> int:
    """Start ``argv`` again and again, each time SIGKILLed after a random delay in [0, duration], until ``kills``
    kills landed (a run that finishes first does not count; at most 4 x ``kills`` tries). Returns the kills."""
    landed = 0
    for _ in range(4 * kills):
        if landed == kills:
            break
        pid = _fork(argv)
        deadline = time.perf_counter() + rng.uniform(0.0, duration)
        status = None
        while status is None and time.perf_counter() < deadline:
            finished, code = os.waitpid(pid, os.WNOHANG)
            status = code if finished else None
            time.sleep(0.002)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            landed += 1
    return landed


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.name != ".records.lock")


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


def _prompts(tmp_path: Path, count: int = 6) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"prompt number {i}\n" for i in range(count)))
    return path


def _generate_argv(model_dir: Path, prompts: Path, neg: Path, out: Path) -> list[str]:
    return ["generate", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out), "--negation", str(neg),
            "--steps", "2", "--height", str(IMAGE_SIZE), "--width", str(IMAGE_SIZE), "--batch-size", "2", "--mode", "paper", "--eta", "0.5"]


def _check_generate(out: Path, reference: Path, count: int) -> dict[str, object]:
    from PIL import Image

    images, ref_images = _pngs(out), _pngs(reference)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for path in (out / "images").glob("*.png"):
        with Image.open(path) as img:
            img.load()  # a half-written PNG would not decode
    indices = [r["index"] for r in records]
    result = {"items": count, "lost": count - len(set(indices)), "duplicated": len(indices) - len(set(indices)),
              "half_written": len(_hidden(out)), "identical": images == ref_images and
              (out / "records.jsonl").read_bytes() == (reference / "records.jsonl").read_bytes()}
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["half_written"] == 0, (result, _hidden(out))
    assert len(images) == count and result["identical"], "rerun after kills differs from the uninterrupted run"
    return result


@pytest.fixture(scope="module")
def negation_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("neg") / "neg.safetensors"
    NegationSet(torch.randn(12, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2, generator=torch.Generator().manual_seed(1))).save(path)
    return path


def test_generate_survives_random_kills(model_dir, negation_file, tmp_path):
    rng = random.Random(SEED)
    prompts = _prompts(tmp_path)
    reference = tmp_path / "reference"
    duration = _timed(_generate_argv(model_dir, prompts, negation_file, reference))
    out = tmp_path / "killed"
    kills = _kill_runs(_generate_argv(model_dir, prompts, negation_file, out), duration, rng)
    assert main(_generate_argv(model_dir, prompts, negation_file, out)) == 0
    result = _check_generate(out, reference, 6)
    assert kills >= 1
    reliability_table.record("kill", "safe-denoiser generate", "6 images, 2 steps, batches of 2", "ok", kills=kills, **result)


def test_two_generate_shards_at_once(model_dir, negation_file, tmp_path):
    prompts = _prompts(tmp_path, 7)
    reference = tmp_path / "reference"
    assert main(_generate_argv(model_dir, prompts, negation_file, reference)) == 0
    out = tmp_path / "sharded"
    argv = _generate_argv(model_dir, prompts, negation_file, out)
    pids = [_fork(argv, {"RANK": str(rank), "WORLD_SIZE": "2"}) for rank in (0, 1)]
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0, 0]
    result = _check_generate(out, reference, 7)
    reliability_table.record("concurrency", "safe-denoiser generate", "2 shards at once (RANK 0/1, WORLD_SIZE 2), 7 images",
                             "ok", kills=0, **result)


def _image_folder(folder: Path, count: int, size: int, channels: int = 3, seed: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        shape = (size, size, 3) if channels == 3 else (size, size)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_negation_build_survives_random_kills(model_dir, tmp_path):
    rng = random.Random(SEED + 1)
    images = _image_folder(tmp_path / "imgs", 10, IMAGE_SIZE)

    def argv(out: Path) -> list[str]:
        return ["negation", "build", "--model", str(model_dir), "--images", str(images), "--out", str(out), "--batch-size", "1"]

    reference = tmp_path / "reference.safetensors"
    duration = _timed(argv(reference))
    out = tmp_path / "killed.safetensors"
    kills = _kill_runs(argv(out), duration, rng)
    assert main(argv(out)) == 0
    parts = out.with_name(out.name + ".parts")
    ref, got = NegationSet.load(reference), NegationSet.load(out)
    result = {"items": len(ref), "lost": len(ref) - len(got), "duplicated": max(0, len(got) - len(ref)),
              "half_written": len(_hidden(tmp_path)) + int(parts.exists()),
              "identical": torch.equal(ref.data, got.data) and ref.metadata == got.metadata}
    leftovers = (_hidden(tmp_path), sorted(p.name for p in parts.iterdir()) if parts.exists() else None)
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["half_written"] == 0 and result["identical"], \
        (result, leftovers)
    assert kills >= 1
    reliability_table.record("kill", "safe-denoiser negation build", "10 images, batches of 1", "ok", kills=kills, **result)


def test_train_survives_random_kills(tmp_path):
    from safetensors.torch import load_file

    from safedenoiser.zoo.images.train import load_state

    rng = random.Random(SEED + 2)
    data = _image_folder(tmp_path / "data", 8, 8, channels=1)

    def argv(out: Path) -> list[str]:
        return ["train", "--data", str(data), "--out", str(out), "--image-size", "8", "--widths", "8", "--steps", "12",
                "--checkpoint-every", "2", "--batch-size", "4"]

    reference = tmp_path / "reference"
    duration = _timed(argv(reference))
    out = tmp_path / "killed"
    kills = _kill_runs(argv(out), duration, rng, kills=max(2, KILLS // 2))
    assert main(argv(out)) == 0
    ref_state, state = load_state(reference / "state.pt"), load_state(out / "state.pt")
    same = all(torch.equal(a, b) for key in ("model", "ema") for a, b in zip(ref_state[key].values(), state[key].values()))
    ref_w, got_w = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    same = same and ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    result = {"items": 12, "lost": 12 - state["step"], "duplicated": max(0, state["step"] - 12),
              "half_written": len({p.name for p in out.iterdir()} - {"state.pt", "model.safetensors", "config.json"}),
              "identical": same and ref_state["loss_avg"] == state["loss_avg"]}
    assert result["lost"] == 0 and result["half_written"] == 0 and result["identical"], result
    assert kills >= 1
    reliability_table.record("kill", "safe-denoiser train", "12 steps, checkpoint every 2 (items = steps)", "ok",
                             kills=kills, **result)
