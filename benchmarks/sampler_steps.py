"""FD of plain samples against sampler steps for the shipped image models, to choose the benchmarks' sampler steps
from the curve rather than for speed (issue 14).

    python benchmarks/sampler_steps.py --out results/sampler-steps            # shipped models
    python benchmarks/sampler_steps.py --uncond runs/fashion-uncond-v2/model.safetensors --only uncond

Same seeds (from 2,000,000) at every point; Heun on the EDM schedule. References: the whole Fashion-MNIST test set
(unconditional; class-conditional with classifier-free guidance 2, request i asks for class i mod 10, as in
``bench images cond``) and the memorised images (memorising model). Writes ``curve.json``, ``curve.md`` and
``curve.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from safedenoiser import fileio
from safedenoiser.zoo.images.assets import MODELS, load_judge, memorised_images
from safedenoiser.zoo.images.common import denoiser_evaluations
from safedenoiser.zoo.images.evaluator import FeatureStats
from safedenoiser.zoo.images.network import ClassifierFreeGuidance, load_checkpoint
from safedenoiser.zoo.images.quality import fd_by_sampler_steps, test_set_stats
from safedenoiser.results import save_figure

GUIDANCE = 2.0


def curves(paths: dict[str, Path], samples: int, steps: list[int]) -> dict[str, list[dict]]:
    judge = load_judge()
    test = test_set_stats(judge)
    out = {}
    for name, path in paths.items():
        model = load_checkpoint(path).eval()
        if name == "cond":
            out[name] = fd_by_sampler_steps(ClassifierFreeGuidance(model, GUIDANCE), judge, test, samples, steps, True)
        elif name == "memorise":
            memorised = FeatureStats.of(judge.features(memorised_images(model.info["subset_index"])))
            out[name] = fd_by_sampler_steps(model, judge, memorised, samples, steps)
        else:
            out[name] = fd_by_sampler_steps(model, judge, test, samples, steps)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/sampler-steps")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 6, 8, 12, 16, 24, 32])
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    for name in MODELS:
        parser.add_argument(f"--{name}", type=Path, default=MODELS[name], help=f"checkpoint (default {MODELS[name].name})")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = {name: getattr(args, name) for name in args.only}
    result = {"samples": args.samples, "guidance_cond": GUIDANCE, "models": {k: str(v) for k, v in paths.items()},
              "curves": curves(paths, args.samples, args.steps)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(out / "curve.json", json.dumps(result, indent=2))
    header = "| model | " + " | ".join(f"{n} steps ({denoiser_evaluations(n)} NFE)" for n in args.steps) + " |"
    lines = [header, "|---" * (len(args.steps) + 1) + "|"]
    for name, curve in result["curves"].items():
        lines.append(f"| {name} | " + " | ".join(f"{p['fd']:.1f}" for p in curve) + " |")
    fileio.write_text(out / "curve.md", "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, curve in result["curves"].items():
        ax.plot([p["nfe"] for p in curve], [p["fd"] for p in curve], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="network evaluations per sample (Heun)", ylabel="FD (judge features)",
           title=f"FD of plain samples vs sampler steps ({args.samples} samples)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "curve.png", dpi=120)
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
