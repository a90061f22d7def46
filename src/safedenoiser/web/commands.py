"""CLI: ``safe-denoiser serve``, a local web page with plain and safe grids side by side (Gradio, imported only here
when the command runs)."""

from __future__ import annotations

import argparse
import sys

from ..argtypes import int_at_least, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="a local web page: plain and safe side by side on the shipped models",
                              description="Start a local web page (Gradio) to try the safe denoiser on the shipped "
                                          "Fashion-MNIST models, offline. Needs the 'web' extra: "
                                          "pip install -e '.[web]'.")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only; the page has no login)")
    p.add_argument("--port", type=int_at_least(1), default=7860, help="port (default 7860)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1: the shipped models are small, and on a CPU shared with other "
                        "jobs more OpenMP threads can be many times slower)")
    p.add_argument("--max-images", type=positive_int, default=32, help="cap on images per side per request (default 32)")
    p.add_argument("--bank", type=positive_int, default=64,
                   help="calibration bank size for the calibrated / substitution modes (default 64)")
    p.add_argument("--safety", default=None, metavar="PROFILE",
                   help="a safety profile folder (safe-denoiser profile build): offered as the page's negation set "
                        "(its reference set and knobs with it) for the pipeline it was built for")
    p.add_argument("--no-preload", action="store_true", help="load the models at the first request, not at start")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from .generation import Engine, Limits

    if args.port > 65535:
        raise ValueError(f"--port must be at most 65535, got {args.port}")
    try:
        from . import app as web
    except ImportError as err:
        raise ImportError(f"safe-denoiser serve needs Gradio ({err}); install the extra: pip install -e '.[web]'") from err
    torch.set_num_threads(args.threads)
    profile = None
    if args.safety:
        from ..pipelines.profile import SafetyProfile

        profile = SafetyProfile.load(args.safety)  # a bad folder is named before the models load
    limits = Limits(max_images=args.max_images, bank=args.bank)
    engine = Engine(limits)
    if not args.no_preload:
        print("loading the shipped models ...", file=sys.stderr)
        engine.preload()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach it can use this machine's CPU "
              "(the page has no login)", file=sys.stderr)
    app = web.build_app(engine, profile)
    web.launch(app, args.host, args.port, block=False, max_file_size=limits.max_upload_bytes)
    print(f"safe-denoiser serve: http://{args.host}:{args.port} (Ctrl+C stops)", file=sys.stderr)
    app.block_thread()
    return 0
