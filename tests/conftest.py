import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "bmv2-topo"))
sys.path.insert(0, str(ROOT / "bench"))

import p4flowtable  # noqa: E402,F401  (first: it loads the P4Runtime protobufs, see proto.py)
