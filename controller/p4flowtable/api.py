"""Client side of the daemon's local socket (JSON lines)."""

from __future__ import annotations

import json
import socket

DEFAULT_SOCKET = "/run/p4ft.sock"


class ApiError(Exception):
    pass


def call(cmd: str, args: dict | None = None, path: str = DEFAULT_SOCKET, timeout: float = 10.0):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
    except OSError as e:
        raise ApiError(f"cannot reach the p4ft daemon at {path}: {e.strerror or e} "
                       "(is 'p4ft daemon' running?)") from None
    with s:
        s.sendall((json.dumps({"cmd": cmd, "args": args or {}}) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ApiError("the daemon closed the connection without answering")
            buf += chunk
    resp = json.loads(buf)
    if not resp.get("ok"):
        raise ApiError(resp.get("error", "unknown error"))
    return resp["result"]
