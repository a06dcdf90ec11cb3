"""p4flowtable: the Linux netfilter flowtable fast path on a P4 switch."""

from . import proto as _proto

__version__ = "0.1.0"

# Before anything imports p4.v1.p4runtime_pb2: see proto.py.
_proto.install()
