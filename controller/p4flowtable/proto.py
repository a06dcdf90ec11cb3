"""The P4Runtime protobuf modules, on protobuf's fast (upb) backend.

The ``p4runtime`` package on the registry ships ``*_pb2.py`` files in the
pre-3.19 generated style (``_descriptor.FileDescriptor(serialized_pb=...)``).
Since protobuf 4 the compiled backends refuse that style ("Descriptors cannot
be created directly"); the only way to import them is the pure-Python backend,
which the daemon's profile showed to be its largest CPU cost.

The serialized FileDescriptorProto inside each of those files is all a modern
``_pb2`` module needs.  :func:`install` reads it from the installed file's
source (the file is parsed, never executed), adds it to the default descriptor
pool and builds the message classes the way current protoc output does, then
registers the result in ``sys.modules`` under the usual name.  Every later
``from p4.v1 import p4runtime_pb2`` gets these modules, whoever imports them.

Nothing is done when the installed files are already in the new style, or when
protobuf runs its pure-Python backend (which still accepts the old style).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types

# Dependency order: each file's imports come before it.
MODULES = (
    "p4.config.v1.p4types_pb2",
    "p4.config.v1.p4info_pb2",
    "p4.v1.p4data_pb2",
    "p4.v1.p4runtime_pb2",
)


class ProtoError(RuntimeError):
    """The installed p4runtime protobuf modules could not be loaded."""


def backend() -> str:
    """protobuf's backend: 'upb', 'cpp' or 'python'."""
    from google.protobuf.internal import api_implementation

    return api_implementation.Type()


def _serialized_descriptor(name: str) -> bytes | None:
    """The FileDescriptorProto bytes of an old-style generated module, or
    None when the installed module is already new-style."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ProtoError(f"{name} is not installed (pip package p4runtime)")
    with open(spec.origin, encoding="utf-8") as f:
        source = f.read()
    if "serialized_pb=" not in source:
        return None
    for node in ast.walk(ast.parse(source, spec.origin)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "FileDescriptor"):
            for kw in node.keywords:
                if kw.arg == "serialized_pb":
                    return ast.literal_eval(kw.value)
    raise ProtoError(f"{spec.origin}: no FileDescriptor(serialized_pb=...) in it")


def _build(name: str, serialized: bytes) -> types.ModuleType:
    from google.protobuf import descriptor_pool
    from google.protobuf.internal import builder

    module = types.ModuleType(name)
    module.__package__ = name.rpartition(".")[0]
    namespace = module.__dict__
    namespace["DESCRIPTOR"] = descriptor_pool.Default().AddSerializedFile(serialized)
    builder.BuildMessageAndEnumDescriptors(namespace["DESCRIPTOR"], namespace)
    builder.BuildTopDescriptorsAndMessages(namespace["DESCRIPTOR"], name, namespace)
    return module


def install() -> None:
    """Make the p4runtime modules importable on a compiled protobuf backend.

    Idempotent; must run before anything imports those modules."""
    if backend() == "python":
        return
    # The well-known and google.rpc files the p4runtime files depend on must be
    # in the pool first; importing their (new-style) modules puts them there.
    from google.protobuf import any_pb2  # noqa: F401
    from google.rpc import status_pb2  # noqa: F401

    for name in MODULES:
        if name in sys.modules:
            continue
        serialized = _serialized_descriptor(name)
        if serialized is None:  # already new-style: the ordinary import works
            continue
        module = _build(name, serialized)
        sys.modules[name] = module
        parent, _, leaf = name.rpartition(".")
        setattr(importlib.import_module(parent), leaf, module)
