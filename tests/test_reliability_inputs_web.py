"""Reliability of the web page's uploads (issue 25 item 9): the caps on files per request and bytes apply while the
request streams in, before anything is kept; the server's temporary folder is removed when it stops (Ctrl+C).
One ``safe-denoiser serve`` process serves every case. Recorded for the reliability table
(tests/reliability_table.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web page needs the 'web' extra (gradio)")
httpx = pytest.importorskip("httpx")

import reliability_table  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    reliability_table.flush()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stored(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _declared_only(port: int, length: int) -> str:
    """An upload request that declares ``length`` bytes and sends none: the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
                     "Content-Type: multipart/form-data; boundary=abc\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer.decode(errors="replace")


def test_upload_caps_and_the_temp_folder_of_serve(tmp_path):
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a server that does not stop dumps its threads (SIGABRT below)
    log = tmp_path / "serve.stderr"  # a file, not a pipe: a full pipe would block the server's exit
    with open(log, "w") as err:
        # SIGINT as a terminal delivers it: a shell that ran the tests in the background (`.ci/run &`) leaves it ignored,
        # and an ignored SIGINT is inherited, so Ctrl+C would never reach the server (the hang this test once showed)
        proc = subprocess.Popen([sys.executable, "-m", "safedenoiser.cli", "serve", "--no-preload", "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        folders = list(tmp_path.glob("safedenoiser-web-*"))
        assert len(folders) == 1, log.read_text() if proc.poll() is not None else folders
        uploads = folders[0] / "uploads"
        # the default caps: 64 files of at most 2 MB per request
        too_many = httpx.post(f"{url}/gradio_api/upload", timeout=60,
                              files=[("files", (f"{i}.png", b"\x89PNG" + bytes(100))) for i in range(65)])
        time.sleep(0.3)  # Gradio moves files in background tasks: time for them to appear if they were kept
        assert too_many.status_code == 413 and "at most 64 per request" in too_many.text
        assert not uploads.exists() or _stored(uploads) == []
        declared = _declared_only(port, 200_000_000)
        assert declared.startswith("HTTP/1.1 413") and "upload of 200.0 MB refused" in declared
        accepted = httpx.post(f"{url}/gradio_api/upload", timeout=60,
                              files=[("files", (f"{i}.png", b"\x89PNG" + bytes(100))) for i in range(3)])
        assert accepted.status_code == 200 and len(_stored(uploads)) == 3
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            pytest.fail(f"serve did not stop on SIGINT within 120 s; its threads:\n{log.read_text()[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmp_path.glob("safedenoiser-web-*")) == [], log.read_text()
    reliability_table.record("inputs", "serve: POST /gradio_api/upload", "65 files (cap 64)",
                             f"{too_many.status_code}: {too_many.text}; nothing stored")
    reliability_table.record("inputs", "serve: POST /gradio_api/upload", "200 MB declared (cap 64 x 2 MB)",
                             f"{declared.splitlines()[0]}: {declared.splitlines()[-1]}; nothing read")
    reliability_table.record("inputs", "safe-denoiser serve", "Ctrl+C (SIGINT) after an upload",
                             f"exit {proc.returncode}; its temporary folder (uploads, downloads) is removed")
