"""Client side of the daemon's local socket (JSON lines)."""

from __future__ import annotations

import json
import socket

DEFAULT_SOCKET = "/run/p4ft/p4ft.sock"   # the service's RuntimeDirectory (etc/p4ft.service)


class ApiError(Exception):
    pass


def _connect(path: str, timeout: float | None) -> socket.socket:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
        return s
    except OSError as e:
        raise ApiError(f"cannot reach the p4ft daemon at {path}: {e.strerror or e} "
                       "(is 'p4ft daemon' running?)") from None


def stream(cmd: str, args: dict | None = None, path: str = DEFAULT_SOCKET):
    """A command whose answer is a stream (monitor): yields each object sent."""
    s = _connect(path, None)
    with s, s.makefile("rb") as f:
        s.sendall((json.dumps({"cmd": cmd, "args": args or {}}) + "\n").encode())
        first = json.loads(f.readline() or b'{"ok": false, "error": "no answer"}')
        if not first.get("ok"):
            raise ApiError(first.get("error", "unknown error"))
        for line in f:
            yield json.loads(line)


def call(cmd: str, args: dict | None = None, path: str = DEFAULT_SOCKET, timeout: float = 10.0):
    s = _connect(path, timeout)
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
