"""Shared fixtures. pytest puts this folder on ``sys.path`` (rootdir-relative test files without ``__init__.py``), so
the helper modules beside it import by name: ``tiny_pipelines`` (offline diffusers pipelines and how to run them),
``reliability_table``; the brute-force kernel reference is :func:`safedenoiser.bench.naive.naive_moments` (the
kernel benchmark compares against it too)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: on a shared, oversubscribed CPU OpenMP's spinning threads make small ops 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny random-weight Stable Diffusion pipeline in memory, one per test module (tests swap its scheduler)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_pipelines import tiny_sd

    return tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The tiny Stable Diffusion pipeline saved to a folder (``--model`` of the CLI tests); read-only."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_pipelines import tiny_sd

    root = tmp_path_factory.mktemp("model")
    tiny_sd(root / "build").save_pretrained(root / "sd")
    return root / "sd"
