"""The compiled modules (the rest is pyproject.toml), each optional: where
one cannot be built, the Python it stands in for does its job.
- _readresponse.c: a reconcile's read decoded in one pass (else protobuf);
- _ctnetlink.c: a conntrack message's attributes (else ctnetlink.decode's walk);
- _flowtuple.c: model.FlowTuple (else model.PyFlowTuple);
- _wire.c: a flow's two Updates packed from their templates (else wire.py's Python)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension(f"p4flowtable.{name}", [f"controller/p4flowtable/{name}.c"],
                             depends=["controller/p4flowtable/_flowtuple.h"],   # FlowTuple's layout (_wire reads it)
                             extra_compile_args=["-O2"], optional=True)
                   for name in ("_readresponse", "_ctnetlink", "_flowtuple", "_wire")])
