"""A local S3-compatible server for the object-storage tests: moto's ``moto_server`` on 127.0.0.1.

moto pulls in ~60 packages, so it lives in its own virtual environment (``tools/test.sh`` makes
``.venv-moto``) and is found through ``DINO_PIPE_MOTO_SERVER`` (the ``moto_server`` executable), else
on ``PATH``. Tests skip, with the reason, when boto3 or the server is missing or will not start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import closing

import pytest


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_executable() -> str | None:
    exe = os.environ.get("DINO_PIPE_MOTO_SERVER") or shutil.which("moto_server")
    return exe if exe and os.access(exe, os.X_OK) else None


class MotoServer:
    """``moto_server`` in a subprocess on a random loopback port (``auth``: credentials are checked)."""

    def __init__(self, auth: bool = False):
        exe = moto_executable()
        if exe is None:
            pytest.skip(
                "no moto_server (set DINO_PIPE_MOTO_SERVER or run tools/test.sh, which installs it in .venv-moto)"
            )
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                err = (
                    self.proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
                    if self.proc.stderr
                    else []
                )
                pytest.skip(f"moto_server exited at start: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.skip("moto_server did not accept connections within 30 s")

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
