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
the same change to both branches, so the scheduler's guided x0 is exactly the corrected one. The combination and the
choice of path come from :mod:`safedenoiser.models.guidance`.

The hook never changes the correction it is given: it applies a copy (:meth:`Correction.replace`) whose diagnostics
callback is a :class:`~.trace.TraceRecorder` forwarding to the given callback; scheduler options it cannot follow are
refused by :class:`~.guard.SchedulerGuard`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch
from torch import Tensor

from ..methods import Correction
from ..models import conversions
from ..models.guidance import combine, correct_guided, guidance_path
from ..negation import NegationSet, NegationSetError
from .guard import SchedulerGuard
from .noise_levels import UnsupportedPipelineError, noise_level, scheduler_prediction
from .trace import TraceRecorder

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

    The correction given is never changed: the hook applies ``correction``, a copy whose diagnostics callback is a
    :class:`~.trace.TraceRecorder` that forwards to the given correction's own callback (and, per model output shape
    and device, copies of that with the negation set packed or moved: :meth:`Correction.to`). ``trace`` holds, per
    corrected model call, ``sigma`` (VE, float) and the per-row ``active`` / ``weight`` tensors (kept on the device
    until :meth:`summary`). Scheduler options the hook cannot follow are refused by a :class:`~.guard.SchedulerGuard`.
    """

    def __init__(self, pipe: Any, correction: Correction, *, check: bool = True, guidance: str = "auto"):
        if not isinstance(correction, Correction):
            raise TypeError(f"correction must be a safedenoiser Correction, got {type(correction).__name__}")
        guidance_path(guidance, correction)
        self.guidance = guidance
        self.pipe = pipe
        self.model = pipeline_model(pipe)
        scheduler_prediction(pipe.scheduler)
        if check:
            diffs = negation_differences(pipe, correction.negation)
            if diffs:
                raise NegationSetError("negation set does not match the pipeline: " + "; ".join(diffs))
        self.given = correction
        self.recorder = TraceRecorder(correction.callback)
        self.correction = correction.replace(callback=self.recorder)
        self._fitted: dict[tuple, Correction] = {}  # the correction per (model output item shape, device)
        self._current = self.correction  # the one of the last corrected call (its negation set: summary)
        self._prompt_embeds_cache: dict[tuple, Tensor | None] = {}  # per (text, shape, device, dtype): the empty
        # prompt's and the concept's embeddings
        self.guard = SchedulerGuard(self._new_run)
        self._handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        self.guard.guard(pipe.scheduler)

    def detach(self) -> None:
        """Remove the hook and the scheduler guards; the pipeline is as before :func:`attach_safe_denoiser`."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.guard.release()

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> SafeDenoiserHook:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    @property
    def trace(self) -> list[dict[str, Any]]:
        return self.recorder.trace

    def reset_trace(self) -> None:
        self.recorder.reset()

    def summary(self, batch_size: int) -> list[dict[str, Any]]:
        """Per image of the last call(s) since :meth:`reset_trace` (:meth:`TraceRecorder.summary`)."""
        return self.recorder.summary(batch_size, self._current.negation)

    def _new_run(self) -> None:
        """Forget the correction's per-run state (the conditional mode's latch; shared by the hook's copies)."""
        reset = getattr(self.correction, "reset", None)
        if reset is not None:
            reset()

    def _guided_branches(self, kwargs: dict, batch: int) -> bool:
        """True when this call should be corrected on its guided x0 (``guidance="guided"``, or ``"auto"`` and a
        correction marked ``acts_on_guided``) and the pipeline runs two-branch CFG (``do_classifier_free_guidance``)."""
        if guidance_path(self.guidance, self.correction) != "guided":
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
        self.guard.ensure(scheduler)  # a scheduler swapped in after attaching: guarded (and a new run) on first use
        return prediction

    def _correction_for(self, shape: tuple[int, ...], device: torch.device) -> Correction:
        """The hook's correction with its negation set in the model output's item shape (packed latents for Flux) and
        on its device: a cached copy, or the hook's correction itself when it fits."""
        key = (shape, device)
        if key not in self._fitted:
            fitted = self.correction
            if fitted.negation.item_shape != shape:
                fitted = fitted.replace(negation=self._packed(fitted.negation, shape))
            self._fitted[key] = fitted.to(device)
        return self._fitted[key]

    def _packed(self, negation: NegationSet, shape: tuple[int, ...]) -> NegationSet:
        """Flux packs (C, H, W) latents into (H/2 W/2, 4C) tokens: the negation set packed the same way."""
        if len(shape) == 2 and len(negation.item_shape) == 3 and hasattr(self.pipe, "_pack_latents"):
            c, h, w = negation.item_shape
            if (h // 2) * (w // 2) == shape[0] and 4 * c == shape[1]:
                packed = self.pipe._pack_latents(negation.data, len(negation), c, h, w)
                return NegationSet(packed, space=negation.space + " (packed)", source=negation.source,
                                   metadata=negation.metadata)
        raise NegationSetError(describe_shape_mismatch(negation, shape, getattr(self.pipe, "vae_scale_factor", None)))

    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook: the model output with the correction's change of x0 added (``output`` itself when none)."""
        if self.correction.is_identity:
            return output
        scheduler = self.pipe.scheduler
        prediction = self._check_call(scheduler)
        sample, timestep, pred = model_call(args, kwargs, output)
        if sample.ndim == 4 and sample.shape[1] != pred.shape[1]:
            sample = sample[:, : pred.shape[1]]  # inpainting UNets also take the mask and the masked latents
        alpha, s = noise_level(scheduler, timestep)
        if alpha <= 0.0 or s <= 0.0:
            return output  # pure noise (flow matching at s = 1) or no noise: x carries no VE position
        sigma = s / alpha
        self.recorder.sigma = sigma
        x_in, out = sample.float(), pred.float()
        x0 = conversions.x0_from_prediction(prediction, x_in, out, alpha, s)
        self.recorder.last_x0 = x0.detach()
        window = self.correction.window
        if not window.sigma_min <= sigma <= window.sigma_max:
            return output
        self._current = correction = self._correction_for(tuple(pred.shape[1:]), pred.device)
        if self._guided_branches(kwargs, x0.shape[0]):
            branch = functools.partial(self._branch, module, args, kwargs, x_in, x0.chunk(2)[0], prediction, alpha, s)
            delta = self._guided_delta(correction, x_in / alpha, sigma, x0, branch)
        else:
            x0_safe = correction(x_in / alpha, sigma, x0)
            delta = None if x0_safe is x0 else x0_safe - x0
        if delta is None:
            return output
        new = (out + conversions.prediction_from_x0(prediction, 0.0, delta, alpha, s)).to(pred.dtype)  # affine: x_t = 0
        return replace_model_output(output, new)

    def _guided_delta(self, correction: Correction, x: Tensor, sigma: float, x0: Tensor,
                      branch: Callable[[str], Any]) -> Tensor | None:
        """Classifier-free guidance with batch [uncond; cond]: the change of the guided x0 corrected once
        (:func:`~safedenoiser.models.guidance.correct_guided`), for both branches (None when nothing acts); the CFG
        weights (1 - w, w) sum to one, so the scheduler's guided x0 is the corrected one. A correction with its own
        ``guided`` method also gets ``null``, the empty prompt's branch when a negative prompt replaced it, and
        ``concept``, the branch of its ``concept`` prompt when it has one (:meth:`_branch`)."""
        x0_u, x0_c = x0.chunk(2)
        w = float(self.pipe.guidance_scale)
        guided = combine(x0_u, x0_c, w)
        branch_inputs = {}
        if hasattr(correction, "guided"):
            branch_inputs["null"] = branch("null")
            if getattr(correction, "concept", None) is not None:
                branch_inputs["concept"] = branch("concept")
        guided_safe = correct_guided(correction, x.chunk(2)[1], sigma, x0_u, x0_c, w, combined=guided, **branch_inputs)
        if guided_safe is guided:
            return None
        return (guided_safe - guided).repeat(2, *([1] * (x0.ndim - 1)))

    def _prompt_embeds(self, text: str, like: Tensor) -> Tensor | None:
        """(1, tokens, dim) embeddings of ``text`` from ``pipe.encode_prompt`` (the one-argument form of
        :class:`~safedenoiser.zoo.t2i.FashionTextPipeline`, or Stable Diffusion's), cached; None for other pipelines."""
        key = (text, tuple(like.shape[1:]), like.device, like.dtype)
        if key not in self._prompt_embeds_cache:
            encode, embeds = getattr(self.pipe, "encode_prompt", None), None
            params = list(inspect.signature(encode).parameters) if callable(encode) else []
            if params == ["prompt"]:
                embeds = encode([text])
            elif "do_classifier_free_guidance" in params and self._has_text_encoder():
                embeds = encode(text, like.device, 1, False)[0]
            if embeds is not None and tuple(embeds.shape[1:]) != key[1]:
                embeds = None
            self._prompt_embeds_cache[key] = None if embeds is None else embeds[:1].to(like.device, like.dtype)
        return self._prompt_embeds_cache[key]

    def _has_text_encoder(self) -> bool:
        """A pipeline run from ``prompt_embeds`` alone may have no tokenizer or text encoder: no empty prompt then."""
        return getattr(self.pipe, "tokenizer", None) is not None and getattr(self.pipe, "text_encoder", None) is not None

    def _branch(self, module: Any, args: tuple, kwargs: dict, x_in: Tensor, x0_u: Tensor, prediction: str,
                alpha: float, s: float, which: str) -> Any:
        """A third branch of CFG for the conditional mode, run on the rows it asks for: ``rows -> x0`` of the model on
        the conditional half's samples with other embeddings (x0_u elsewhere; ``forward()``: no hook on the call).
        ``which="null"``: the empty prompt's, where a negative prompt replaced it (so a flagged request's text
        direction can be dropped to the unconditional prediction); None when the null branch is the empty prompt
        already or the call cannot be split (added or timestep conditions). ``which="concept"``: the correction's
        ``concept`` prompt's (a flagged request is steered away from it); a call that cannot be split is refused."""
        embeds = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        splittable = (torch.is_tensor(embeds) and not kwargs.get("added_cond_kwargs")
                      and kwargs.get("timestep_cond") is None and embeds.shape[0] == x_in.shape[0])
        text = "" if which == "null" else self.correction.concept
        other = self._prompt_embeds(text, embeds) if splittable else None
        if other is None:
            if which == "null":
                return None
            raise UnsupportedPipelineError(
                f"concept={text!r} needs a text pipeline whose model takes encoder_hidden_states (and no added "
                "conditions) and that can encode a prompt (encode_prompt); this pipeline cannot run the concept branch")
        usable = torch.ones(x_in.shape[0] // 2, dtype=torch.bool, device=embeds.device)
        if which == "null":
            usable = (embeds.chunk(2)[0] - other).abs().flatten(1).amax(1) > 1e-4 * float(other.abs().max())
            if not bool(usable.any()):
                return None
        sample = args[0] if args else kwargs.get("sample")
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        half = x_in.shape[0] // 2

        def run(rows: Tensor) -> Tensor:
            out = x0_u.clone()
            idx = torch.nonzero(rows.to(usable.device) & usable).flatten()
            if len(idx):
                t = timestep[half:][idx] if torch.is_tensor(timestep) and timestep.ndim > 0 and timestep.numel() > 1 else timestep
                pred = module.forward(sample[half:][idx], t, encoder_hidden_states=other.expand(len(idx), -1, -1),
                                      return_dict=False)[0]
                out[idx] = conversions.x0_from_prediction(prediction, x_in[half:][idx], pred.float(), alpha, s)
            return out

        return run


def model_call(args: tuple, kwargs: dict, output: Any) -> tuple[Tensor, Any, Tensor]:
    """(sample, timestep, prediction) of a diffusers model call seen by a forward hook with kwargs: the input (``sample``
    or, for transformers, ``hidden_states``), its timestep, and the output's prediction (tuple or ``.sample``)."""
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
    return sample, timestep, output[0] if isinstance(output, tuple) else output.sample


def replace_model_output(output: Any, new: Tensor) -> Any:
    """A diffusers model output (a tuple, or an output object with ``.sample``) with its prediction replaced by ``new``;
    what a forward hook returns."""
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
