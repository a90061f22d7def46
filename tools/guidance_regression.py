"""Bit-identity record of every classifier-free guidance path (issue 21 items 2 and 5): run before and after a refactor.

    python tools/guidance_regression.py record /tmp/guidance.pt   # before
    python tools/guidance_regression.py check /tmp/guidance.pt    # after: every tensor torch.equal, else exit 1

Covers (a) the shipped text pipeline, 4 steps: plain CFG, a negative prompt, guidance 1, the ``guidance_fn`` and
``prompt_embeds_fn`` seams, and the diffusers hook in modes ``paper`` and ``conditional`` (guided and branches paths),
with the hook's trace summary and a user callback; (b) the class-conditional Fashion model with CFG (plain, negative
class) and the safe CFG wrapper; (c) ``GuidedMixtureDenoiser`` on a small class-conditional mixture.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
PROMPTS = ["a pair of trousers", "a sneaker", "a bag"]
SEEDS = [0, 1, 2]


def _generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in SEEDS]


def text_pipeline_outputs() -> dict[str, object]:
    from safedenoiser import Calibration, NegationSet, make_correction
    from safedenoiser.zoo.images.assets import class_negation_images
    from safedenoiser.methods import ReferenceSet
    from safedenoiser.pipelines import attach_safe_denoiser
    from safedenoiser.pipelines.examples import allowed_images
    from safedenoiser.zoo.t2i import load_text_pipeline

    pipe = load_text_pipeline()
    run = {"num_inference_steps": 4, "output_type": "pt"}
    out: dict[str, object] = {}
    out["t2i/plain"] = pipe(PROMPTS, generator=_generators(), guidance_scale=3.0, **run).images
    out["t2i/negative"] = pipe(PROMPTS, generator=_generators(), guidance_scale=3.0, negative_prompt="a shirt",
                               **run).images
    out["t2i/negative_list"] = pipe(PROMPTS, generator=_generators(), guidance_scale=2.0,
                                    negative_prompt=["a shirt", "a bag", "a dress"], **run).images
    out["t2i/w1"] = pipe(PROMPTS, generator=_generators(), guidance_scale=1.0, **run).images
    out["t2i/per_prompt"] = pipe(PROMPTS[:2], generator=[torch.Generator().manual_seed(s) for s in range(4)],
                                 num_images_per_prompt=2, guidance_scale=3.0, **run).images
    out["t2i/guidance_fn"] = pipe(PROMPTS, generator=_generators(), guidance_scale=3.0,
                                  guidance_fn=lambda i, t, x, u, c: u + (2.0 + i) * (c - u), **run).images
    out["t2i/prompt_embeds_fn"] = pipe(PROMPTS, generator=_generators(), guidance_scale=3.0,
                                       prompt_embeds_fn=lambda i, e: e * (1.0 - 0.05 * i), **run).images
    seen: list[torch.Tensor] = []
    out["t2i/step_callback"] = pipe(PROMPTS, generator=_generators(), guidance_scale=3.0,
                                    callback_on_step_end=lambda p, i, t, d: (seen.append(d["latents"].clone()), {})[1],
                                    **run).images
    out["t2i/step_callback_latents"] = torch.stack(seen)

    negation = NegationSet(class_negation_images("trouser", 100))
    reference = ReferenceSet(allowed_images(100))
    bank = torch.randn(30, 784, generator=torch.Generator().manual_seed(5))
    cases = {"paper": {"mode": "paper"}, "calibrated": {"mode": "calibrated", "calibration": Calibration(bank, 0.3)},
             "conditional": {"mode": "conditional", "reference": reference},
             "conditional_branches": {"mode": "conditional", "reference": reference, "guidance": "branches"}}
    for name, knobs in cases.items():
        knobs = dict(knobs)
        guidance = knobs.pop("guidance", "auto")
        calls: list[torch.Tensor] = []
        correction = make_correction(negation, knobs.pop("mode"), **knobs,
                                     callback=lambda d, calls=calls: calls.append(d["active"].clone()))
        user_callback = correction.callback
        with attach_safe_denoiser(pipe, correction, guidance=guidance) as hook:
            for prompt_kw in ({}, {"negative_prompt": "a shirt"}):
                key = f"t2i/hook_{name}" + ("_negative" if prompt_kw else "")
                hook.reset_trace()
                out[key] = pipe(PROMPTS, generator=_generators(), guidance_scale=3.0, **prompt_kw, **run).images
                out[key + "/summary"] = hook.summary(len(PROMPTS))
                out[key + "/trace_sigma"] = torch.tensor([e["sigma"] for e in hook.trace], dtype=torch.float64)
                out[key + "/trace_active"] = torch.stack([e["active"] for e in hook.trace])
        out[f"t2i/hook_{name}/user_calls"] = torch.stack(calls)
        out[f"t2i/hook_{name}/callback_restored"] = correction.callback is user_callback
        out[f"t2i/hook_{name}/negation_untouched"] = correction.negation is negation
        out[f"t2i/hook_{name}/detached"] = pipe(PROMPTS, generator=_generators(), guidance_scale=3.0, **run).images
    return out


def image_model_outputs() -> dict[str, object]:
    from safedenoiser import Calibration, NegationSet, make_correction
    from safedenoiser.zoo.images.assets import MODELS, class_negation_images
    from safedenoiser.zoo.images.network import ClassifierFreeGuidance, load_checkpoint
    from safedenoiser.methods import ReferenceSet
    from safedenoiser.methods.conditional import SafeClassifierFreeGuidance
    from safedenoiser.pipelines.examples import allowed_images

    model = load_checkpoint(MODELS["cond"])
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 1, 28, 28, generator=gen)
    labels = torch.tensor([1, 0, 2, 1, 5, 9])
    out: dict[str, object] = {}
    negation = NegationSet(class_negation_images("trouser", 100))
    reference = ReferenceSet(allowed_images(100))
    bank = torch.randn(30, 784, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for s in (0.3, 2.0):
            sigma = torch.full((6,), s)
            xs = x * s
            out[f"images/cfg1/{s}"] = ClassifierFreeGuidance(model, 1.0)(xs, sigma, labels)
            out[f"images/cfg2/{s}"] = ClassifierFreeGuidance(model, 2.0)(xs, sigma, labels)
            out[f"images/cfg_negative/{s}"] = ClassifierFreeGuidance(model, 2.0, negative_labels=1)(xs, sigma, labels)
            out[f"images/cfg1_negative/{s}"] = ClassifierFreeGuidance(model, 1.0, negative_labels=1)(xs, sigma, labels)
            for where in ("auto", "branches", "guided"):
                for name, mode, knobs in (("paper", "paper", {}),
                                          ("calibrated", "calibrated", {"calibration": Calibration(bank, 0.3)}),
                                          ("conditional", "conditional", {"reference": reference}),
                                          ("loud", "conditional", {"reference": reference, "gain": 1e6})):
                    correction = make_correction(negation, mode, **knobs)
                    for w in (1.0, 2.0):
                        safe = SafeClassifierFreeGuidance(model, correction, w, where=where)
                        out[f"images/safe_cfg/{name}/{where}/{w}/{s}"] = safe(xs, sigma, class_labels=labels)
    return out


def mixture_outputs() -> dict[str, object]:
    sys.path.insert(0, str(TESTS))
    from test_conditional import conditional_mixture, sample_class

    from safedenoiser import make_correction
    from safedenoiser.methods.conditional import SafeClassifierFreeGuidance

    model, negation, reference = conditional_mixture(8)
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    sigma = torch.full((5,), 0.6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, -1])
    out: dict[str, object] = {}
    for w in (1.0, 3.0):
        guided = model.guided(w)
        out[f"mixture/guided/{w}"] = guided(x, sigma, labels)
        out[f"mixture/guided_null/{w}"] = guided(x, sigma, None)
        out[f"mixture/guided_int/{w}"] = guided(x, sigma, 2)
        out[f"mixture/sample/{w}"] = sample_class(guided, 8, 1, n=20, steps=6)
        correction = make_correction(negation, "conditional", reference=reference)
        for where in ("guided", "branches"):
            safe = SafeClassifierFreeGuidance(model, correction, w, where=where)
            out[f"mixture/safe_sample/{where}/{w}"] = sample_class(safe, 8, 0, n=20, steps=6)
    return out


def record_all() -> dict[str, object]:
    torch.set_num_threads(1)
    return {**mixture_outputs(), **image_model_outputs(), **text_pipeline_outputs()}


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "check"):
        print(__doc__)
        return 2
    command, path = argv
    now = record_all()
    if command == "record":
        torch.save(now, path)
        print(f"recorded {len(now)} outputs in {path}")
        return 0
    before = torch.load(path, weights_only=False)
    missing = sorted(set(before) ^ set(now))
    differ = sorted(k for k in set(before) & set(now) if not same(before[k], now[k]))
    for key in missing:
        print(f"MISSING {key}")
    for key in differ:
        print(f"DIFFERS {key}")
    print(f"{len(before) - len(differ) - len(missing)} of {len(before)} outputs bit-identical")
    return 1 if missing or differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
