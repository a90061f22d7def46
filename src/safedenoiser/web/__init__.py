"""``safe-denoiser serve``: a local web page to try the safe denoiser, plain and safe side by side.

:mod:`.generation` holds the plain functions (models, negation sets from uploads, one plain-vs-safe run, the grids,
the diagnostics plot, the downloads); :mod:`.app` builds the Gradio page on top of them; :mod:`.commands` is the CLI
entry. Gradio is imported only by :mod:`.app`, so ``safe-denoiser --help`` does not load it.
"""
