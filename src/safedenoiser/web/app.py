"""The Gradio page of ``safe-denoiser serve``: controls on the left, plain and safe grids, the diagnostics plot and
the downloads on the right. All the work is :class:`~safedenoiser.web.generation.Engine.run`; this module only
turns widget values into a :class:`~safedenoiser.web.generation.Request` and results into widgets.

Offline: analytics off, no share link, no server-side rendering, system fonts (nothing is fetched from the web).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from ..cli import describe  # noqa: E402
from ..images.data import FASHION_CLASSES  # noqa: E402
from .generation import (AVOIDED, DEFAULT_GUIDANCE, DEFAULT_PROMPT, METHODS, MODELS, SHIPPED_NEGATION,  # noqa: E402
                         UPLOADED_NEGATION, Engine, Request, WebInputError, diagnostics_figure, labelled_grid,
                         negation_from_uploads, write_downloads)

DEFAULTS = Request()
KEEP_RUNS = 16  # download folders kept on disk (older ones are removed)
INTRO = """# safe-denoiser: plain and safe, side by side

Same seeds on both sides: the left grid is the model as it is, the right grid the same model with the chosen method
keeping samples away from the **negation set**. Under each image: the label the shipped Fashion-MNIST judge gives it
(red: *trouser*, the shipped negation set's class). Paper: *Training-Free Safe Denoisers for Safe Use of Diffusion
Models* (arXiv 2502.08011). Everything runs on this machine with the models shipped in the package.
"""


def method_choices(model: str) -> list[tuple[str, str]]:
    return [(m.label, name) for name, m in METHODS.items() if model in m.models]


def knob_update(model: str, method: str) -> tuple[Any, Any]:
    """The knob box (label, default value, shown only if the method has a knob) and the method's description."""
    spec = METHODS.get(method)
    if spec is None:
        return gr.update(visible=False), gr.update(value="")
    if spec.knob is None:
        return gr.update(visible=False), gr.update(value=spec.help)
    return gr.update(label=f"{spec.knob} (main knob)", value=spec.default.get(model), visible=True), gr.update(value=spec.help)


def on_model(model: str, method: str) -> tuple[Any, ...]:
    keep = method if model in METHODS.get(method, METHODS["conditional"]).models else DEFAULTS.method
    knob, help_text = knob_update(model, keep)
    return (gr.update(visible=model == "fashion-t2i"), gr.update(visible=model == "fashion-cond"),
            gr.update(visible=model != "fashion-uncond", value=DEFAULT_GUIDANCE[model]),
            gr.update(choices=method_choices(model), value=keep), knob, help_text)


class Page:
    """The page's state: the engine, and the folder that holds the downloads of recent runs."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.folder = Path(tempfile.mkdtemp(prefix="safedenoiser-web-"))
        self._runs = itertools.count()

    def _run_folder(self) -> Path:
        folder = self.folder / f"run-{next(self._runs):06d}"
        old = sorted(self.folder.glob("run-*"))[:-KEEP_RUNS + 1]
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
        return folder

    def generate(self, model: str, prompt: str, class_name: str, guidance: float | None, seed: float | None,
                 count: float, steps: float, negation_source: str, uploads: list[str] | None, method: str,
                 knob: float | None, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        """The button: status text, both grids, the plot and the downloads; a refused input or a failure becomes one
        line in the status box (and a warning pop-up), never a traceback."""
        try:
            negation = None
            if negation_source == UPLOADED_NEGATION:
                progress(0.0, desc="reading the uploaded negation images")
                negation = negation_from_uploads(uploads or [], self.engine.limits)
            request = Request(model=model, prompt=prompt, class_name=class_name,
                              guidance=guidance if model != "fashion-uncond" else None,
                              seed=0 if seed is None else seed, count=count, steps=steps, method=method,
                              knob=knob if METHODS.get(method) and METHODS[method].knob else None)
            progress(0.0, desc="loading models")
            result = self.engine.run(request, negation, lambda fraction, phase: progress(fraction, desc=phase))
            files = write_downloads(result, self._run_folder())
        except Exception as err:  # the page's edge: one line for the user, nothing else
            message = str(err) if isinstance(err, WebInputError) else describe(err)
            gr.Warning(message)
            return (f"**Not generated:** {message}", gr.skip(), gr.skip(), gr.skip(), gr.skip())
        plain = labelled_grid(result.plain, result.plain_labels)
        safe = labelled_grid(result.safe, result.safe_labels)
        return (result.summary(), plain, safe, diagnostics_figure(result), [str(files["zip"]), str(files["record"])])


def build_app(engine: Engine | None = None) -> gr.Blocks:
    """The page (not launched); ``engine`` defaults to a new :class:`Engine` with the default limits."""
    page = Page(engine or Engine())
    limits = page.engine.limits
    with gr.Blocks(title="safe-denoiser", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model = gr.Dropdown([(f"{name}: {label}", name) for name, label in MODELS.items()], value=DEFAULTS.model,
                                    label="Model", elem_id="model")
                prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", max_length=200, elem_id="prompt",
                                    info="'khakis' names no trouser word, yet the plain model draws trousers")
                class_name = gr.Dropdown(list(FASHION_CLASSES), value=AVOIDED, label="Class", visible=False,
                                         elem_id="class")
                method = gr.Dropdown(method_choices(DEFAULTS.model), value=DEFAULTS.method, label="Method (right grid)",
                                     elem_id="method")
                knob = gr.Number(METHODS[DEFAULTS.method].default[DEFAULTS.model],
                                 label=f"{METHODS[DEFAULTS.method].knob} (main knob)", elem_id="knob")
                method_help = gr.Markdown(METHODS[DEFAULTS.method].help, elem_id="method-help")
                with gr.Row():
                    guidance = gr.Number(DEFAULT_GUIDANCE[DEFAULTS.model], label="Guidance (CFG)", elem_id="guidance",
                                         min_width=100)
                    seed = gr.Number(DEFAULTS.seed, precision=0, minimum=0, label="First seed", elem_id="seed",
                                     min_width=100)
                with gr.Row():
                    count = gr.Slider(1, limits.max_images, value=DEFAULTS.count, step=1, label="Images",
                                      elem_id="count", min_width=140)
                    steps = gr.Slider(1, limits.max_steps, value=DEFAULTS.steps, step=1, label="Sampler steps",
                                      elem_id="steps", min_width=140)
                negation_source = gr.Radio(
                    [("shipped: 500 Fashion-MNIST training trousers", SHIPPED_NEGATION),
                     ("my images (upload below)", UPLOADED_NEGATION)],
                    value=SHIPPED_NEGATION, label="Negation set (what must not be generated)", elem_id="negation")
                uploads = gr.File(file_count="multiple", file_types=["image"], elem_id="uploads", height=140,
                                  label=f"Negation images: up to {limits.max_uploads} files, "
                                        f"{limits.max_upload_bytes / 1e6:g} MB and {limits.max_upload_side} px "
                                        "a side each (made grey 28x28)")
                button = gr.Button("Generate plain and safe", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                status = gr.Markdown("Choose the settings and press **Generate**.", elem_id="status")
                with gr.Row():
                    plain = gr.Image(label="plain", type="pil", interactive=False, elem_id="grid-plain")
                    safe = gr.Image(label="safe: the method chosen on the left", type="pil", interactive=False,
                                    elem_id="grid-safe")
                plot = gr.Plot(label="Correction diagnostics over the noise levels", show_label=False,
                               elem_id="diagnostics")
                files = gr.File(label="Downloads: images (zip) and the settings record (JSON)", file_count="multiple",
                                interactive=False, elem_id="downloads")
        model.change(on_model, [model, method], [prompt, class_name, guidance, method, knob, method_help])
        method.change(knob_update, [model, method], [knob, method_help])
        uploads.upload(lambda files: gr.update(value=UPLOADED_NEGATION), uploads, negation_source)
        button.click(page.generate, [model, prompt, class_name, guidance, seed, count, steps, negation_source, uploads,
                                     method, knob], [status, plain, safe, plot, files])
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def theme() -> Any:
    """Gradio's default theme with system fonts (the default one asks Google Fonts for its typeface)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True,
           max_file_size: int | None = None) -> Any:
    """Serve ``app`` on ``host:port`` (no share link, no server-side rendering); ``block=False`` returns at once."""
    return app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                      max_file_size=max_file_size, ssr_mode=False, quiet=True, footer_links=[], theme=theme(),
                      show_error=False)
