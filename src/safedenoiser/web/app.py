"""The Gradio page of ``safe-denoiser serve``: controls on the left, plain and safe grids, the diagnostics plot and
the downloads on the right. All the work is :class:`~safedenoiser.web.generation.Engine.run`; this module only
turns widget values into a :class:`~safedenoiser.web.generation.Request` and results into widgets.

Offline: analytics off, no share link, no server-side rendering, system fonts (nothing is fetched from the web).
Uploads: the caps on files per request and bytes per file apply while the request streams in, before Gradio keeps
anything (:class:`UploadCaps`); uploads and downloads live in one temporary folder per server, removed when the
process ends (Ctrl+C, SIGTERM or a normal exit). Status lines never show server paths.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_USER_TEMP = os.environ.get("GRADIO_TEMP_DIR")  # a folder the user chose for Gradio's cache is theirs: never removed

import atexit  # noqa: E402
import itertools  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from ..cli import describe  # noqa: E402
from ..zoo.images.data import FASHION_CLASSES  # noqa: E402
from .generation import (AVOIDED, DEFAULT_GUIDANCE, DEFAULT_PROMPT, ESTIMATORS, METHODS, MODELS,  # noqa: E402
                         SHIPPED_NEGATION, PROFILE_NEGATION, UPLOADED_NEGATION, Engine, Limits, Request, WebInputError,
                         diagnostics_figure, labelled_grid, negation_from_uploads, takes_concept, takes_estimator,
                         without_paths, write_downloads)

DEFAULTS = Request()
KEEP_RUNS = 16  # download folders kept on disk (older ones are removed)
ESTIMATOR_LABELS = {"kernel": "kernel (kNN split of the bank)",
                    "ratio": "fitted ratio (classifiers fitted on the bank; slower)"}
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


def method_options(model: str, method: str) -> tuple[Any, Any, Any]:
    """The options beside the main knob, shown only where they apply (and only then sent): the beta* estimator (the
    methods that calibrate on a bank), the concept and steer (the conditional mode on the text-to-image model)."""
    concept = takes_concept(model, method)
    return gr.update(visible=takes_estimator(model, method)), gr.update(visible=concept), gr.update(visible=concept)


def on_model(model: str, method: str) -> tuple[Any, ...]:
    keep = method if model in METHODS.get(method, METHODS["conditional"]).models else DEFAULTS.method
    knob, help_text = knob_update(model, keep)
    return (gr.update(visible=model == "fashion-t2i"), gr.update(visible=model == "fashion-cond"),
            gr.update(visible=model != "fashion-uncond", value=DEFAULT_GUIDANCE[model]),
            gr.update(choices=method_choices(model), value=keep), knob, help_text)


class Page:
    """The page's state: the engine, and this server's temporary folder: ``uploads/`` (Gradio's cache, through
    ``GRADIO_TEMP_DIR`` unless the user set it) and the downloads of recent runs; removed at exit (:meth:`close`)."""

    def __init__(self, engine: Engine, profile: Any = None):
        self.engine, self.profile = engine, profile
        self.folder = Path(tempfile.mkdtemp(prefix="safedenoiser-web-"))
        self.uploads = self.folder / "uploads"
        self._runs = itertools.count()
        atexit.register(self.close)

    def close(self) -> None:
        """Remove the temporary folder (uploads and downloads)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run_folder(self) -> Path:
        folder = self.folder / f"run-{next(self._runs):06d}"
        old = sorted(self.folder.glob("run-*"))[:-KEEP_RUNS + 1]
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
        return folder

    def generate(self, model: str, prompt: str, class_name: str, guidance: float | None, seed: float | None,
                 count: float, steps: float, negation_source: str, uploads: list[str] | None, method: str,
                 knob: float | None, estimator: str = DEFAULTS.estimator, concept: str | None = None,
                 steer: float | None = DEFAULTS.steer, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
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
                              knob=knob if METHODS.get(method) and METHODS[method].knob else None,
                              estimator=estimator if takes_estimator(model, method) else DEFAULTS.estimator,
                              concept=concept if takes_concept(model, method) else None,
                              steer=steer if takes_concept(model, method) else DEFAULTS.steer)
            progress(0.0, desc="loading models")
            profile = self.profile if negation_source == PROFILE_NEGATION else None
            result = self.engine.run(request, negation, lambda fraction, phase: progress(fraction, desc=phase),
                                     profile=profile)
            files = write_downloads(result, self._run_folder())
        except Exception as err:  # the page's edge: one line for the user, nothing else
            message = without_paths(str(err) if isinstance(err, WebInputError) else describe(err), uploads or [])
            gr.Warning(message)
            return (f"**Not generated:** {message}", gr.skip(), gr.skip(), gr.skip(), gr.skip())
        plain = labelled_grid(result.plain, result.plain_labels)
        safe = labelled_grid(result.safe, result.safe_labels)
        notes = (negation.metadata.get("reading_notes") or []) if negation is not None else []
        status = result.summary() + "".join(f"  \nNote: {without_paths(n, uploads or [])}" for n in notes)
        return (status, plain, safe, diagnostics_figure(result), [str(files["zip"]), str(files["record"])])


def build_app(engine: Engine | None = None, profile: Any = None) -> gr.Blocks:
    """The page (not launched); ``engine`` defaults to a new :class:`Engine` with the default limits; ``profile`` (a
    :class:`~safedenoiser.pipelines.profile.SafetyProfile`, from ``serve --safety``) becomes a negation-set choice."""
    page = Page(engine or Engine(), profile)
    limits = page.engine.limits
    if _USER_TEMP is None:  # Gradio reads it when the Blocks and the server are made: uploads go to our folder
        os.environ["GRADIO_TEMP_DIR"] = str(page.uploads)
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
                estimator = gr.Dropdown([(ESTIMATOR_LABELS.get(name, name), name) for name in ESTIMATORS],
                                        value=DEFAULTS.estimator, label="beta* estimator (bank methods)",
                                        visible=takes_estimator(DEFAULTS.model, DEFAULTS.method), elem_id="estimator")
                concept_shown = takes_concept(DEFAULTS.model, DEFAULTS.method)
                concept = gr.Textbox("", label="Concept (empty: off)", max_length=200, elem_id="concept",
                                     placeholder="trousers, pants, jeans", visible=concept_shown,
                                     info="a flagged request is steered away from these words instead of losing "
                                          "its whole prompt")
                steer = gr.Number(DEFAULTS.steer, label="steer (>= 0, with a concept)", elem_id="steer",
                                  visible=concept_shown)
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
                sources = [("shipped: 500 Fashion-MNIST training trousers", SHIPPED_NEGATION),
                           ("my images (upload below)", UPLOADED_NEGATION)]
                if page.profile is not None:
                    sources.append((f"safety profile (serve --safety): {page.profile.negation.source}", PROFILE_NEGATION))
                negation_source = gr.Radio(
                    sources, value=PROFILE_NEGATION if page.profile is not None else SHIPPED_NEGATION, label="Negation set (what must not be generated)", elem_id="negation")
                uploads = gr.File(file_count="multiple", file_types=["image"], elem_id="uploads", height=140,
                                  label=f"Negation images: up to {limits.max_uploads} files, "
                                        f"{limits.max_upload_bytes / 1e6:g} MB and {limits.max_upload_side} px "
                                        "a side each (made grey 28x28; transparent pixels black)")
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
        model.change(on_model, [model, method], [prompt, class_name, guidance, method, knob, method_help]).then(
            method_options, [model, method], [estimator, concept, steer])
        method.change(knob_update, [model, method], [knob, method_help])
        method.change(method_options, [model, method], [estimator, concept, steer])
        uploads.upload(lambda files: gr.update(value=UPLOADED_NEGATION), uploads, negation_source)
        button.click(page.generate, [model, prompt, class_name, guidance, seed, count, steps, negation_source, uploads,
                                     method, knob, estimator, concept, steer], [status, plain, safe, plot, files])
    app.queue(default_concurrency_limit=1, max_size=32)
    app.safedenoiser_page = page  # launch() applies its upload caps and removes its folder at exit
    return app


def theme() -> Any:
    """Gradio's default theme with system fonts (the default one asks Google Fonts for its typeface)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


class UploadCaps:
    """ASGI middleware: an upload request (``POST .../gradio_api/upload``) with more than ``max_files`` files, or
    declaring more than ``max_files`` x (``max_file_bytes`` + 4 KiB of part headers) bytes, is refused with 413 before
    Gradio keeps any of it. The declared length is checked before reading; the file count while the body streams in: the part
    past the cap is never passed on, and what was passed ends with a malformed part header, so that Gradio's parser
    fails and deletes the files it started. (The per-file byte cap is Gradio's ``max_file_size``.)"""

    def __init__(self, app: Any, max_files: int, max_file_bytes: int):
        self.app, self.max_files, self.max_file_bytes = app, max_files, max_file_bytes
        self.max_bytes = max_files * (max_file_bytes + 4096)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/gradio_api/upload"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _refuse(send, f"upload of {int(length) / 1e6:.1f} MB refused; at most {self.max_files} files "
                                       f"of {self.max_file_bytes / 1e6:g} MB each")
        boundary = re.search(rb"boundary=\"?([^\";]+)", headers.get(b"content-type", b""))
        if boundary is None:
            return await self.app(scope, receive, send)
        opening = b"--" + boundary.group(1) + b"\r\n"
        state = {"carry": b"", "count": 0, "cut": False, "ended": False}

        async def capped_receive() -> dict:
            if state["ended"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            data = state["carry"] + message.get("body", b"")
            more = message.get("more_body", False)
            start = 0
            while (found := data.find(opening, start)) >= 0:
                state["count"] += 1
                if state["count"] > self.max_files:
                    state["cut"] = state["ended"] = True
                    return {"type": "http.request", "body": data[:found] + opening + b":\r\n", "more_body": False}
                start = found + 1
            keep = len(opening) - 1 if more else 0
            state["carry"] = data[len(data) - keep:] if keep else b""
            state["ended"] = not more
            return {"type": "http.request", "body": data[: len(data) - keep], "more_body": more}

        async def guarded_send(message: dict) -> None:
            if not state["cut"]:
                await send(message)

        await self.app(scope, capped_receive, guarded_send)
        if state["cut"]:
            await _refuse(send, f"more than {self.max_files} files in one upload; at most {self.max_files} per request")


async def _refuse(send: Any, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _exit_on_sigterm() -> None:
    """Ctrl+C ends the process normally, so atexit removes the page's folder; make SIGTERM do the same."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True,
           max_file_size: int | None = None, limits: Limits | None = None) -> Any:
    """Serve ``app`` on ``host:port`` (no share link, no server-side rendering); ``block=False`` returns at once.
    Uploads are capped by ``limits`` (default: the page's engine's) before they are stored (:class:`UploadCaps`)."""
    from starlette.middleware import Middleware

    page = getattr(app, "safedenoiser_page", None)
    limits = limits or (page.engine.limits if page is not None else Limits())
    max_file_size = max_file_size or limits.max_upload_bytes
    if page is not None:
        _exit_on_sigterm()
    caps = Middleware(UploadCaps, max_files=limits.max_uploads, max_file_bytes=max_file_size)
    return app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                      max_file_size=max_file_size, ssr_mode=False, quiet=True, footer_links=[], theme=theme(),
                      show_error=False, app_kwargs={"middleware": [caps]})
