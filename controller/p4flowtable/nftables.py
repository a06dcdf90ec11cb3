"""Loading the kernel's part of the ruleset into the router namespace with nft."""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import netns
from .policy import PolicyError, Ruleset


def load(netns_name: str | None, ruleset: Ruleset, check: bool = False) -> None:
    """nft -f of the kernel's copies: one transaction, so a ruleset the kernel
    refuses changes nothing (check: nft -c, the kernel's verdict without the
    change). nft's messages name the operator's files."""
    with tempfile.TemporaryDirectory(prefix="p4ft-nft-") as d:
        main = ruleset.render(Path(d))
        res = netns.run(netns_name, ["nft"] + (["-c"] if check else []) + ["-f", str(main)], check=False)
    if res.returncode != 0:
        msg = ruleset.map_nft_message((res.stderr or res.stdout).strip())
        raise PolicyError(f"nft rejected the ruleset:\n{msg}", source=str(ruleset.source))
