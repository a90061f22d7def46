"""Reading user text files (prompt lists, CSV) with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path


class TextFileError(ValueError):
    """A text file that is missing, unreadable or not UTF-8."""


def read_text_file(path: str | Path) -> str:
    """The text of ``path`` decoded as UTF-8, a leading byte-order mark removed ('utf-8-sig': spreadsheets save CSV
    with one). Anything else is a one-line :class:`TextFileError` naming the file (for Latin-1 / UTF-16 files: the
    byte offset of the first byte that is not UTF-8; a file with NUL bytes in its first 4 KiB is called binary)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TextFileError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise TextFileError(f"{path} is a folder, not a text file") from None
    except OSError as err:
        raise TextFileError(f"cannot read {path}: {err.strerror or err}") from None
    if b"\0" in data[:4096]:
        raise TextFileError(f"{path} is binary, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TextFileError(f"{path} is not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}); save it as "
                            "UTF-8 (spreadsheets: 'CSV UTF-8')") from None
