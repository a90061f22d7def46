"""Put the safe denoiser into any diffusers pipeline without forking it: a forward hook on ``pipe.unet`` /
``pipe.transformer`` (docs/guide/diffusers.md, "How it works").

At every model call the hook reads ``(alpha, s)`` of the model input from the scheduler's own state
(:mod:`.noise_levels`), converts the output to x0 (:mod:`safedenoiser.models.conversions`), applies the
correction in VE form ``x0' = correction(x_in / alpha, s / alpha, x0)`` and adds the change back to the model
output as a delta, so that the scheduler's x0 is the safe x0 and an inactive correction is bit-identical.

Classifier-free guidance, negative prompts and SLD call the model on a batch of branches; the hook corrects
every branch. The ``paper`` and ``calibrated`` corrections are affine in x0 with coefficients that depend on
(x, sigma) only, and CFG weights sum to one, so this equals correcting the guided x0 (paper Eq. 8). A nonlinear,
condition-aware correction (``conditional``) is not: with ``guidance="guided"`` (the default for corrections marked
``acts_on_guided``) the hook forms the guided x0 = x0_u + w (x0_c - x0_u) of two-branch CFG, corrects it, and adds
the same change to both branches, so the scheduler's guided x0 is exactly the corrected one.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from ..methods import Correction
from ..models import conversions
from ..negation import NegationSet, NegationSetError
from .noise_levels import UnsupportedPipelineError, noise_level, scheduler_prediction

GUIDANCE_PATHS = ("auto", "branches", "guided")
SUPPORTED_MODELS = ("UNet2DConditionModel", "UNet2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel")


def pipeline_model(pipe: Any) -> torch.nn.Module:
    """The denoising network of a pipeline: ``pipe.unet`` or ``pipe.transformer``."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if model is None:
        raise UnsupportedPipelineError(f"{type(pipe).__name__} has neither a unet nor a transformer to hook")
    if type(model).__name__ not in SUPPORTED_MODELS:
        raise UnsupportedPipelineError(
            f"model {type(model).__name__} is not supported by the safe-denoiser hook; supported: {', '.join(SUPPORTED_MODELS)}")
    return model


def vae_fingerprint(vae: Any) -> list[float]:
    """Sum and absolute sum of the encoder's first and last weights (float64): tells two VAEs apart, yet is the same
    for one VAE stored in float32, float16 or bfloat16 (compare with :func:`same_fingerprint`)."""
    params = list(vae.encoder.parameters())
    out = []
    for param in (params[0], params[-1]):
        values = param.detach().double()
        out += [float(f"{float(values.sum()):.6g}"), float(f"{float(values.abs().sum()):.6g}")]
    return out


def same_fingerprint(a: list[float], b: list[float], rtol: float = 1e-2) -> bool:
    """Equal within ``rtol`` of the absolute sums (which bound the sums), entry by entry."""
    if len(a) != len(b):
        return False
    scales = [max(abs(a[i + 1]), abs(b[i + 1]), 1e-12) for i in range(0, len(a), 2) for _ in range(2)]
    return all(abs(x - y) <= rtol * s for x, y, s in zip(a, b, scales))


def negation_differences(pipe: Any, negation: NegationSet) -> list[str]:
    """What differs between a negation set's metadata (see :mod:`.negation_build`) and ``pipe``; empty if it matches.

    Checked when present in the metadata: VAE scaling and shift factors, VAE fingerprint, latent channels.
    """
    meta, diffs = negation.metadata, []
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        for key, mine in (("vae_scaling_factor", getattr(vae.config, "scaling_factor", None)),
                          ("vae_shift_factor", getattr(vae.config, "shift_factor", None))):
            if key in meta and meta[key] != mine:
                diffs.append(f"{key}: negation set {meta[key]!r}, pipeline {mine!r}")
        if "vae_fingerprint" in meta and not same_fingerprint(meta["vae_fingerprint"], vae_fingerprint(vae)):
            diffs.append(f"VAE weights: negation set encoded with {meta.get('model', '?')!r} "
                         f"(fingerprint {meta['vae_fingerprint']}), pipeline VAE fingerprint {vae_fingerprint(vae)}")
        channels = getattr(vae.config, "latent_channels", None)
        if channels is not None and len(negation.item_shape) == 3 and negation.item_shape[0] != channels:
            diffs.append(f"latent channels: negation set {negation.item_shape[0]}, pipeline VAE {channels}")
        if "pixel_pipeline" in meta:
            diffs.append(f"the negation set holds pixels of a {meta['pixel_pipeline']} but this pipeline denoises VAE "
                         "latents; build the set with this pipeline (safe-denoiser negation build --model ...)")
    else:
        if any(key.startswith("vae_") for key in meta):
            diffs.append(f"the negation set holds VAE latents of {meta.get('model', '?')!r} but {type(pipe).__name__} "
                         "works in pixel space; build the set with this pipeline")
        config = getattr(getattr(pipe, "unet", None), "config", None)
        if config is not None and "pixel_sample_size" in meta:
            mine = (getattr(config, "in_channels", None), getattr(config, "sample_size", None))
            theirs = (meta.get("pixel_channels"), meta.get("pixel_sample_size"))
            if mine != theirs:
                diffs.append(f"pixel sets: negation set has (channels, size) {theirs}, pipeline UNet {mine}")
    return diffs


class SafeDenoiserHook:
    """A removable handle: the hook is active from construction until :meth:`detach` (or the end of a ``with``).

    ``trace`` holds, per corrected model call, ``sigma`` (VE, float) and the per-row ``active`` / ``weight``
    tensors from the correction's diagnostics callback (kept on the device until :meth:`summary`).
    """

    def __init__(self, pipe: Any, correction: Correction, *, check: bool = True, guidance: str = "auto"):
        if not isinstance(correction, Correction):
            raise TypeError(f"correction must be a safedenoiser Correction, got {type(correction).__name__}")
        if guidance not in GUIDANCE_PATHS:
            raise ValueError(f"unknown guidance path {guidance!r}; choose one of {GUIDANCE_PATHS}")
        self.guidance = guidance
        self.pipe = pipe
        self.model = pipeline_model(pipe)
        scheduler_prediction(pipe.scheduler)
        if check:
            diffs = negation_differences(pipe, correction.negation)
            if diffs:
                raise NegationSetError("negation set does not match the pipeline: " + "; ".join(diffs))
        self.correction = correction
        self._user_callback = correction.callback
        correction.callback = self._record
        self._negations: dict[tuple[int, ...], NegationSet] = {}
        self._guarded: dict[int, tuple[Any, Any]] = {}
        self.trace: list[dict[str, Any]] = []
        self._sigma: float = math.nan
        self._handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        self._guard(pipe.scheduler)

    def detach(self) -> None:
        """Remove the hook and the scheduler guards; the pipeline is as before :func:`attach_safe_denoiser`."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for scheduler, previous in self._guarded.values():
            for name, method in previous.items():
                if method is None:
                    scheduler.__dict__.pop(name, None)
                else:
                    setattr(scheduler, name, method)
        self._guarded.clear()
        self.correction.callback = self._user_callback

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> SafeDenoiserHook:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def reset_trace(self) -> None:
        self.trace = []
        self._last_x0 = None

    def summary(self, batch_size: int) -> list[dict[str, Any]]:
        """Per image of the last call(s) since :meth:`reset_trace`: ``steps_active`` (model calls where any of its
        branches was corrected), ``mean_weight`` / ``max_weight`` over its corrected rows, and ``model_calls``.
        Rows are mapped to images as diffusers batches branches: row r belongs to image r mod ``batch_size``."""
        stats = [{"model_calls": 0, "steps_active": 0, "weights": []} for _ in range(batch_size)]
        for entry in self.trace:
            active = entry["active"].detach().cpu().reshape(-1, batch_size)
            weight = entry.get("weight")
            weight = weight.detach().float().cpu().reshape(-1, batch_size) if weight is not None else None
            for i in range(batch_size):
                stats[i]["model_calls"] += 1
                if bool(active[:, i].any()):
                    stats[i]["steps_active"] += 1
                    if weight is not None:
                        stats[i]["weights"] += weight[:, i][active[:, i]].tolist()
        nearest = self._nearest_negation(batch_size)
        out = []
        for i, item in enumerate(stats):
            w = item.pop("weights")
            out.append({**item, "mean_weight": sum(w) / len(w) if w else 0.0, "max_weight": max(w) if w else 0.0,
                        **nearest[i]})
        return out

    def _nearest_negation(self, batch_size: int) -> list[dict[str, Any]]:
        """Per image: the negation item nearest to the x0 of the last model call (its conditional branch, the
        last ``batch_size`` rows), with its distance and, when the set records them, its image name."""
        last = getattr(self, "_last_x0", None)
        negation = self.correction.negation
        if last is None or last.shape[0] < batch_size or tuple(last.shape[1:]) != negation.item_shape:
            return [{} for _ in range(batch_size)]
        from ..kernels import nearest_neighbours

        rows = last[-batch_size:].reshape(batch_size, -1).to(negation.device, negation.dtype)
        dist, index = nearest_neighbours(rows, negation.flat, 1)
        names = [entry.get("name") for entry in negation.metadata.get("images", [])]
        out = []
        for d, i in zip(dist[:, 0].tolist(), index[:, 0].tolist()):
            record = {"nearest_negation_index": int(i), "nearest_negation_distance": round(float(d), 4)}
            if i < len(names) and names[i]:
                record["nearest_negation_image"] = names[i]
            out.append(record)
        return out

    def _record(self, diagnostics: dict[str, Tensor]) -> None:
        self.trace.append({"sigma": self._sigma, "active": diagnostics["active"], "weight": diagnostics.get("weight")})
        if self._user_callback is not None:
            self._user_callback(diagnostics)

    def _guided_branches(self, kwargs: dict, batch: int) -> bool:
        """True when this call should be corrected on its guided x0 (``guidance="guided"``, or ``"auto"`` and a
        correction marked ``acts_on_guided``) and the pipeline runs two-branch CFG (``do_classifier_free_guidance``)."""
        mode = self.guidance
        if mode == "branches" or (mode == "auto" and not getattr(self.correction, "acts_on_guided", False)):
            return False
        if not getattr(self.pipe, "do_classifier_free_guidance", False):
            return False
        if kwargs.get("skip_layers") is not None:
            raise UnsupportedPipelineError("skip-layer guidance calls the model on a third, partial branch; the "
                                           "guided-x0 correction supports two-branch CFG only (skip_guidance_layers=None)")
        if batch % 2:
            raise UnsupportedPipelineError(f"classifier-free guidance with an odd model batch ({batch}): cannot split "
                                           "it into [uncond; cond] branches")
        return True

    def _check_call(self, scheduler: Any) -> str:
        rescale = getattr(self.pipe, "_guidance_rescale", 0.0) or 0.0
        if rescale > 0:
            raise UnsupportedPipelineError(
                f"guidance_rescale={rescale} rescales the guided prediction by a ratio of standard deviations "
                "(nonlinear), so the scheduler's x0 would not be the safe x0; use guidance_rescale=0")
        prediction = scheduler_prediction(scheduler)
        if id(scheduler) not in self._guarded:
            self._guard(scheduler)
        return prediction

    def _guard(self, scheduler: Any) -> None:
        """Refuse ``step`` options that make the scheduler's x0 differ from the model's (churn, per-token sigmas), and
        start every pipeline call with fresh per-run state: ``set_timesteps`` (called by every diffusers pipeline at
        the start of a call) resets the correction's state (the conditional mode's latch), so a call stopped by an
        exception leaves nothing to the next one. Also reset here: the first call on a scheduler guarded lazily."""
        original, original_set = scheduler.step, scheduler.set_timesteps
        previous = {key: scheduler.__dict__.get(key) for key in ("step", "set_timesteps")}  # others' instance wrappers
        name = type(scheduler).__name__
        reset = getattr(self.correction, "reset", None)
        if reset is not None:
            reset()

        @functools.wraps(original_set)  # pipelines inspect the signatures of set_timesteps and step
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            reset_state = getattr(self.correction, "reset", None)
            if reset_state is not None:
                reset_state()
            return original_set(*args, **kwargs)

        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("s_churn", 0.0):
                raise UnsupportedPipelineError(f"{name}.step(s_churn={kwargs['s_churn']}) adds churn noise and evaluates "
                                               "x0 at an inflated sigma; the safe-denoiser hook needs s_churn=0")
            if kwargs.get("per_token_timesteps") is not None:
                raise UnsupportedPipelineError(f"{name}.step(per_token_timesteps=...) is not supported by the hook")
            return original(*args, **kwargs)

        scheduler.step, scheduler.set_timesteps = step, set_timesteps
        self._guarded[id(scheduler)] = (scheduler, previous)

    def _negation_for(self, shape: tuple[int, ...]) -> None:
        """Match the negation set to the model output's item shape and device (packing latents for Flux)."""
        negation = self.correction.negation
        if negation.item_shape == shape:
            return
        if shape in self._negations:
            self.correction.negation = self._negations[shape]
            return
        if len(shape) == 2 and len(negation.item_shape) == 3 and hasattr(self.pipe, "_pack_latents"):
            c, h, w = negation.item_shape
            if (h // 2) * (w // 2) == shape[0] and 4 * c == shape[1]:
                packed = self.pipe._pack_latents(negation.data, len(negation), c, h, w)
                self._negations[shape] = NegationSet(packed, space=negation.space + " (packed)", source=negation.source,
                                                     metadata=negation.metadata)
                self.correction.negation = self._negations[shape]
                return
        raise NegationSetError(describe_shape_mismatch(negation, shape, getattr(self.pipe, "vae_scale_factor", None)))

    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        correction = self.correction
        if correction.is_identity:
            return output
        scheduler = self.pipe.scheduler
        prediction = self._check_call(scheduler)
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        pred = output[0] if isinstance(output, tuple) else output.sample
        if sample.ndim == 4 and sample.shape[1] != pred.shape[1]:
            sample = sample[:, : pred.shape[1]]  # inpainting UNets also take the mask and the masked latents
        alpha, s = noise_level(scheduler, timestep)
        if alpha <= 0.0 or s <= 0.0:
            return output  # pure noise (flow matching at s = 1) or no noise: x carries no VE position
        sigma = s / alpha
        self._sigma = sigma
        x_in, out = sample.float(), pred.float()
        x0 = conversions.x0_from_prediction(prediction, x_in, out, alpha, s)
        self._last_x0 = x0.detach()
        window = correction.window
        if not window.sigma_min <= sigma <= window.sigma_max:
            return output
        self._negation_for(tuple(pred.shape[1:]))
        if correction.negation.device != pred.device:
            correction.negation = correction.negation.to(pred.device)
        if self._guided_branches(kwargs, x0.shape[0]):
            # classifier-free guidance with batch [uncond; cond]: correct the guided x0 and add the same change to
            # both branches; the CFG weights (1 - w, w) sum to one, so the scheduler's guided x0 is the corrected one
            x0_u, x0_c = x0.chunk(2)
            w = float(self.pipe.guidance_scale)
            guided = x0_u + w * (x0_c - x0_u)
            x_c = x_in.chunk(2)[1] / alpha
            if hasattr(correction, "guided"):  # also reduces the text direction of flagged requests
                guided_safe = correction.guided(x_c, sigma, x0_u, x0_c, w, combined=guided)
            else:
                guided_safe = correction(x_c, sigma, guided)
            if guided_safe is guided:
                return output
            delta = (guided_safe - guided).repeat(2, *([1] * (x0.ndim - 1)))
        else:
            x0_safe = correction(x_in / alpha, sigma, x0)
            if x0_safe is x0:
                return output
            delta = x0_safe - x0
        new = (out + conversions.prediction_from_x0(prediction, 0.0, delta, alpha, s)).to(pred.dtype)  # affine: x_t = 0
        if isinstance(output, tuple):
            return (new, *output[1:])
        output.sample = new
        return output


def describe_shape_mismatch(negation: NegationSet, shape: tuple[int, ...], vae_scale_factor: int | None) -> str:
    msg = f"negation latents have item shape {negation.item_shape} but the pipeline's model works on {shape}"
    if vae_scale_factor and len(shape) == 3 and len(negation.item_shape) == 3:
        f = vae_scale_factor
        msg += (f" (images of {negation.item_shape[1] * f}x{negation.item_shape[2] * f} vs {shape[1] * f}x{shape[2] * f} "
                "pixels); build the set at the generation resolution or generate at the set's resolution")
    return msg
