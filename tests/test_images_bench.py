"""Each image benchmark's --quick path and the demo run on the shipped assets and write their outputs."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from safedenoiser.bench import demo  # noqa: E402
from safedenoiser.bench import images as benchmarks  # noqa: E402
from safedenoiser.zoo.images import assets  # noqa: E402

torch.set_num_threads(2)
NEEDS = {"uncond": ["uncond"], "cond": ["cond"], "memorisation": ["memorise"]}


def require_assets(kinds):
    missing = [p.name for p in [assets.JUDGE_ASSET, assets.EVAL_ASSET, *(assets.MODELS[k] for k in kinds)] if not p.is_file()]
    if missing:
        pytest.skip(f"shipped assets not built yet: {missing}")


@pytest.mark.parametrize("which", ["uncond", "cond", "memorisation"])
def test_quick_benchmark_writes_outputs(which, tmp_path):
    require_assets(NEEDS[which])
    from safedenoiser.cli import build_parser

    args = build_parser().parse_args(["bench", "images", which, "--quick", "--out", str(tmp_path), "--threads", "2"])
    assert args.run(args) == 0
    out = tmp_path / which
    for name in ("results.json", "results.md", "tradeoff.png", "grid_plain.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in result["rows"]}
    assert {"plain", "paper", "reference", "calibrated", "substitution", "spell", "rejection"} <= methods
    for row in result["rows"]:
        assert 0 <= row["unsafe"] <= 1 and 0 <= row["broken"] <= 1 and row["fd"] >= 0 and row["nfe_per_sample"] > 0
    assert result["config"]["broken_detector"]["max_distance"] > 0 and "| broken |" in (out / "results.md").read_text()
    rejection = next(r for r in result["rows"] if r["method"] == "rejection")
    plain = next(r for r in result["rows"] if r["method"] == "plain")
    assert rejection["unsafe"] == 0 or rejection["extra"]["attempts"] >= 20 * result["config"]["samples"]  # exhausted
    assert rejection["nfe_per_sample"] >= plain["nfe_per_sample"]


def test_bad_benchmark_class_name(tmp_path):
    require_assets(["uncond"])
    with pytest.raises(ValueError, match="unknown class name 'trousers'"):
        benchmarks.bench_uncond(tmp_path, benchmarks.SIZES["quick"], progress=False, negated="trousers")


def test_demo_quick(tmp_path):
    require_assets(["uncond", "memorise"])
    result = demo.run_demo(tmp_path, progress=False, quick=True)
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "uncond" / "grid_substitution.png").is_file()
    assert set(result["uncond"]) >= {"plain", "calibrated", "substitution", "spell", "rejection"}
    assert "| unsafe | broken |" in (tmp_path / "summary.md").read_text()
    assert all(0 <= row["broken"] <= 1 for row in result["memorisation"].values())
