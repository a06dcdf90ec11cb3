"""Entering the router namespace for the few calls that need it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    # os.setns arrives with Python 3.12
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, name))


@contextlib.contextmanager
def entered(name: str | None):
    """Run the block in network namespace `name` (this thread only).

    File descriptors opened inside (netlink, tap) stay bound to it.
    """
    if not name:
        yield
        return
    if not exists(name):
        raise FileNotFoundError(f"network namespace {name!r} does not exist ({NETNS_RUN_DIR}/{name})")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


NETLINK_RCVBUF = 8 << 20   # event bursts (thousands of new connections) fit


def netlink_socket(name: str | None, protocol: int) -> socket.socket:
    """A netlink socket bound to the namespace (no helper process needed)."""
    with entered(name):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, protocol)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, NETLINK_RCVBUF)   # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_RCVBUF)
    return s


def run(name: str | None, argv: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the namespace (ip netns exec)."""
    cmd = (["ip", "netns", "exec", name] if name else []) + argv
    return subprocess.run(cmd, input=input, capture_output=True, text=True, check=check)


def read_sysctl(name: str | None, key: str) -> str:
    with entered(name):
        with open(_sysctl_path(key)) as f:
            return f.read().strip()


def write_sysctl(name: str | None, key: str, value: str) -> None:
    with entered(name):
        with open(_sysctl_path(key), "w") as f:
            f.write(value)


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")
