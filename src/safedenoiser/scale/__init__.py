"""Negation sets at scale: memory-mapped files and top-k kernels with a bounded truncation error.

The streamed exact kernels live in :mod:`safedenoiser.kernels`, the file format, readers and writer in
:mod:`safedenoiser.negation_file`; see docs/guide/scale.md.
"""

from ..negation_file import MappedFileError, NegationFileWriter, SafetensorsWriter, map_array, map_safetensors
from .topk import TopKError, TopKKernel, TopKMoments

__all__ = ["MappedFileError", "NegationFileWriter", "SafetensorsWriter", "TopKError", "TopKKernel", "TopKMoments",
           "map_array", "map_safetensors"]
