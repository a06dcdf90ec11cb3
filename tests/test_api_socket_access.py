"""Who may talk to the daemon's API socket: its owner (root) and its group,
no one else (docs/security.md). The socket is made 0660 by the daemon and,
as a service, lives in /run/p4ft (mode 0750, the unit's RuntimeDirectory)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p4flowtable.api import call
from p4flowtable.apiserver import ApiServer
from p4flowtable.events import EventBus

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to try the socket as another user")
def test_only_root_and_its_group_reach_the_api_socket(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    tmp_path.chmod(0o755)
    d.chmod(0o755)          # so that only the socket's own mode stands in the way
    path = str(d / "p4ft.sock")
    probe = ("import sys; sys.path.insert(0, sys.argv[2]); from p4flowtable.api import call, ApiError\n"
             "try:\n    print(call('ping', path=sys.argv[1]))\nexcept ApiError as e:\n    print(e)")

    async def go():
        async def handle(cmd, args):
            return "pong"
        server = ApiServer(path, handle, EventBus())
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, lambda: call("ping", path=path)) == "pong"
            other = await loop.run_in_executor(None, lambda: subprocess.run(
                ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c", probe,
                 path, str(ROOT / "controller")], capture_output=True, text=True, timeout=30))
            assert "Permission denied" in other.stdout, other.stdout + other.stderr
        finally:
            server.close()
    asyncio.run(go())
