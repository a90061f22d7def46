"""A safety profile: the negation set, the reference set and the knobs of one correction, saved together as one
folder (as diffusers saves a guider's config), with the pipeline it was built for.

Folder layout: ``safety_config.json`` (``_class_name``, version, ``mode``, ``knobs``, ``window_t``, ``pipeline``, the
two files' content hashes), ``negation.safetensors``, ``reference.safetensors`` (conditional mode). Use::

    profile = SafetyProfile.load("trouser-profile")
    hook = profile.attach(pipe)          # checks the pipeline, then attach_safe_denoiser(pipe, profile.correction(pipe))

``safe-denoiser profile build`` writes one; ``safe-denoiser generate --safety FOLDER`` uses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import fileio
from ..methods import Correction, ReferenceSet, make_correction
from ..negation import NegationSet

CONFIG_NAME = "safety_config.json"
NEGATION_FILE = "negation.safetensors"
REFERENCE_FILE = "reference.safetensors"
DEFAULT_MODE = "conditional"  # the mode that acts on prompts with classifier-free guidance (docs/conditional.md)


class SafetyProfileError(ValueError):
    """A profile folder that cannot be read, or a profile attached to a pipeline it was not built for."""


def _decode(value: Any) -> Any:
    """Knob values as stored: strict JSON writes infinities as strings ("-inf")."""
    return float(value) if value in ("inf", "-inf", "nan") else value


def pipeline_identity(pipe: Any, model: str | None = None) -> dict[str, Any]:
    """What a profile records about its pipeline: class, model name or folder, denoiser weights fingerprint."""
    from .reference import denoiser_fingerprint

    return {"class": type(pipe).__name__, "model": None if model is None else str(model),
            "fingerprint": denoiser_fingerprint(pipe)}


@dataclass
class SafetyProfile:
    """Negation set + reference set + knobs of ``mode`` (+ ``window_t``: act only at training timesteps >= it)."""

    negation: NegationSet
    mode: str = DEFAULT_MODE
    reference: ReferenceSet | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    window_t: int | None = None
    pipeline: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode == "conditional" and self.reference is None:
            raise SafetyProfileError("a conditional-mode profile needs a reference set of allowed items")

    # -- use ---------------------------------------------------------------------------------------------------
    def correction(self, pipe: Any = None) -> Correction:
        """A fresh correction with this profile's sets and knobs (``window_t`` needs ``pipe``'s scheduler)."""
        knobs = {k: _decode(v) for k, v in self.knobs.items()}
        if self.reference is not None:
            knobs["reference"] = self.reference
        if self.window_t is not None:
            if pipe is None:
                raise SafetyProfileError("this profile acts from a training timestep (window_t): give the pipeline")
            from ..methods import Window
            from .noise_levels import ve_sigma_at_timestep

            knobs["window"] = Window(ve_sigma_at_timestep(pipe.scheduler, self.window_t))
        return make_correction(self.negation, self.mode, **knobs)

    def check(self, pipe: Any) -> None:
        """Refuse (one line) a pipeline other than the one the profile was built for: class and denoiser weights."""
        if not self.pipeline:
            return
        from .hook import same_fingerprint
        from .reference import denoiser_fingerprint

        built = self.pipeline.get("model") or self.pipeline.get("class")
        if self.pipeline.get("class") not in (None, type(pipe).__name__):
            raise SafetyProfileError(f"this safety profile was built for {built!r} ({self.pipeline['class']}), not for a "
                                     f"{type(pipe).__name__}; build one for this pipeline (safe-denoiser profile build)")
        stored = self.pipeline.get("fingerprint")
        if stored and not same_fingerprint(stored, denoiser_fingerprint(pipe)):
            raise SafetyProfileError(f"this safety profile was built for {built!r}, whose denoiser weights differ from "
                                     "this pipeline's; build one for this pipeline (safe-denoiser profile build)")

    def attach(self, pipe: Any, *, check: bool = True, guidance: str = "auto") -> Any:
        """Check the pipeline (unless ``check=False``) and attach the correction; returns the hook handle."""
        from .attach import attach_safe_denoiser

        if check:
            self.check(pipe)
        return attach_safe_denoiser(pipe, self.correction(pipe), check=check, guidance=guidance)

    def config(self) -> dict[str, Any]:
        """The JSON config (also what ``generate`` records as the run's parameters)."""
        from .. import __version__
        from .generate import jsonable

        sets = {"negation": {"file": NEGATION_FILE, "content_hash": self.negation.content_hash, "items": len(self.negation),
                             "source": self.negation.source}}
        if self.reference is not None:
            sets["reference"] = {"file": REFERENCE_FILE, "content_hash": self.reference.content_hash,
                                 "items": len(self.reference), "source": self.reference.source}
        return jsonable({"_class_name": type(self).__name__, "_safedenoiser_version": __version__, "mode": self.mode,
                         "knobs": self.knobs, "window_t": self.window_t, "pipeline": self.pipeline, **sets})

    # -- files -------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the profile folder atomically (a kill leaves the old folder or the new one, never half of one)."""
        folder = Path(folder)
        if folder.exists() and not (folder / CONFIG_NAME).is_file():
            if not folder.is_dir() or any(folder.iterdir()):
                raise SafetyProfileError(f"{folder} exists and is not a safety profile; choose another --out")
            folder.rmdir()
        folder.parent.mkdir(parents=True, exist_ok=True)
        with fileio.atomic_folder(folder) as tmp:
            self.negation.save(tmp / NEGATION_FILE)
            if self.reference is not None:
                self.reference.save(tmp / REFERENCE_FILE)
            fileio.write_text(tmp / CONFIG_NAME, json.dumps(self.config(), indent=1, sort_keys=True, allow_nan=False) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SafetyProfile:
        """Read a profile folder; its sets are verified against the hashes in the config."""
        folder = Path(folder)
        path = folder / CONFIG_NAME
        if not path.is_file():
            what = "does not exist" if not folder.exists() else f"has no {CONFIG_NAME}"
            raise SafetyProfileError(f"safety profile {folder} {what} (write one with: safe-denoiser profile build)")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SafetyProfileError(f"cannot read {path}: {err}") from err
        if not isinstance(config, dict) or config.get("_class_name") != cls.__name__:
            raise SafetyProfileError(f"{path} is not a safety profile config (no _class_name {cls.__name__!r})")
        negation = NegationSet.load(folder / NEGATION_FILE)
        reference = None
        if config.get("reference"):
            reference = ReferenceSet.load(folder / REFERENCE_FILE)
        for name, loaded in (("negation", negation), ("reference", reference)):
            expected = (config.get(name) or {}).get("content_hash")
            if loaded is not None and expected and expected != loaded.content_hash:
                raise SafetyProfileError(f"{folder}: {name} set content hash {loaded.content_hash[:12]} differs from "
                                         f"the config's {expected[:12]}; the folder was changed after it was written")
        window_t = config.get("window_t")
        if window_t is not None and (not isinstance(window_t, int) or window_t < 0):
            raise SafetyProfileError(f"{path}: window_t must be an integer >= 0, got {window_t!r}")
        return cls(negation, config.get("mode", DEFAULT_MODE), reference, dict(config.get("knobs") or {}), window_t,
                   dict(config.get("pipeline") or {}))


def attach_profile(pipe: Any, folder: str | Path, *, check: bool = True) -> Any:
    """``SafetyProfile.load(folder).attach(pipe)``: the one call from Python."""
    return SafetyProfile.load(folder).attach(pipe, check=check)

