"""Loading the kernel's part of the ruleset into the router namespace with nft."""

from __future__ import annotations

import os
import tempfile

from . import netns
from .policy import Policy, PolicyError


def _nft(netns_name: str | None, policy: Policy, check: bool) -> None:
    fd, path = tempfile.mkstemp(prefix="p4ft-", suffix=".nft")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(policy.kernel_text)
        argv = ["nft"] + (["-c"] if check else []) + ["-f", path]
        res = netns.run(netns_name, argv, check=False)
    finally:
        os.unlink(path)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).replace(path, policy.source).strip()
        raise PolicyError(f"nft rejected the ruleset:\n{msg}", source=policy.source)


def check(netns_name: str | None, policy: Policy) -> None:
    """nft -c: the kernel's own check of its part, changing nothing."""
    _nft(netns_name, policy, check=True)


def load(netns_name: str | None, policy: Policy) -> None:
    check(netns_name, policy)
    _nft(netns_name, policy, check=False)
