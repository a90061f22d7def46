"""Negation sets larger than memory: the memory-mapped readers and the block writer of
:mod:`safedenoiser.negation_file` (their one home), under the name the docs use."""

from ..negation_file import (DTYPE_CODES, HEADER_RESERVE, SAFETENSORS_DTYPES, MappedFileError, NegationFileWriter,
                             SafetensorsWriter, map_array, map_safetensors, read_safetensors_header)

__all__ = ["DTYPE_CODES", "HEADER_RESERVE", "SAFETENSORS_DTYPES", "MappedFileError", "NegationFileWriter",
           "SafetensorsWriter", "map_array", "map_safetensors", "read_safetensors_header"]
