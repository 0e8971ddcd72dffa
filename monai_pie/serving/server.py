"""Start and stop a local MONAI Label server with the monai-pie app (tests, benchmarks, ``monai-pie label serve``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalServer", "free_port", "start_local_server"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalServer:
    """A running server: its URL, process, log file and how long it took to answer ``/info/``."""

    url: str
    process: subprocess.Popen
    log: Path
    startup_s: float

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and everything it started."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/info/", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_local_server(app_dir: str | Path, studies: str | Path, port: int | None = None, device: str = "cpu",
                       tasks: str | None = None, timeout: float = 180.0, env: dict[str, str] | None = None,
                       log: str | Path | None = None, conf: dict[str, str] | None = None) -> LocalServer:
    """Start ``monailabel start_server`` bound to 127.0.0.1 and wait until ``/info/`` answers.

    Args:
        app_dir: the app folder (``monai-pie label app``).
        studies: the studies folder.
        port: the port (default: a free one).
        device: where the models run.
        tasks: comma-separated task names (default: all).
        timeout: seconds to wait for the server.
        env: extra environment variables (e.g. ``MONAI_LABEL_SESSION_PATH``).
        log: where the server's output goes (default: ``<app_dir>/server.log``).
        conf: more ``--conf`` options of the app (e.g. ``{"compile_denoiser": "true"}``).

    Raises:
        RuntimeError: the server exited or did not answer in time; the message ends with its log.
    """
    port = port or free_port()
    log_path = Path(log) if log else Path(app_dir) / "server.log"
    command = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(app_dir), "--studies",
               str(studies), "--host", "127.0.0.1", "--port", str(port), "--conf", "device", device]
    if tasks:
        command += ["--conf", "tasks", tasks]
    for key, value in (conf or {}).items():
        command += ["--conf", key, str(value)]
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with open(log_path, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   start_new_session=True)
    server = LocalServer(url, process, log_path, 0.0)
    while not _answers(url):
        if process.poll() is not None or time.perf_counter() - start > timeout:
            server.stop()
            raise RuntimeError(f"the MONAI Label server did not start; its log ends:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.25)
    server.startup_s = time.perf_counter() - start
    return server
