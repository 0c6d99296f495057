"""Starting and stopping the SegOne MONAI Label server in a subprocess (tests, benchmarks, scripts)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bundle.utils.config import BUNDLE_ROOT

__all__ = ["APP_DIR", "free_port", "start_server", "stop_server"]

APP_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    studies: str, models_dir: str | os.PathLike, log: str | os.PathLike, *conf: str, timeout: float = 180
) -> tuple[subprocess.Popen, str]:
    """``monailabel start_server --app bundle/apps/monailabel`` on 127.0.0.1 and a free port; waits for ``/info/``.

    Args:
        studies: a studies folder or a DICOMweb URL.
        models_dir: the app's ``models_dir`` (fine-tuned weights).
        log: file receiving the server's output.
        conf: extra ``--conf KEY VALUE`` arguments, as a flat list.
        timeout: seconds to wait for the server to answer.

    Returns:
        ``(process, base URL)``.

    Raises:
        RuntimeError: the server exited or did not answer in time (the log's end is in the message).
    """
    import requests

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(APP_DIR),
        "--studies",
        studies,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--conf",
        "models_dir",
        str(models_dir),
        *conf,
    ]
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=BUNDLE_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"MONAI Label server exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=5).ok:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"MONAI Label server did not come up in {timeout:.0f} s:\n{Path(log).read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Stops the server as Ctrl+C would (SIGINT); kills its process group if it does not stop in time.

    Args:
        proc: the server process of :func:`start_server`.
        timeout: seconds to wait after SIGINT.

    Returns:
        The server's exit status.

    Raises:
        subprocess.TimeoutExpired: it did not stop in time (it was killed).
    """
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
