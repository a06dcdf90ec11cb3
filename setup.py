"""The one compiled module (the rest is pyproject.toml): a reconcile's read
decoded in one pass (controller/p4flowtable/_readresponse.c). Optional: where
it cannot be built, the reconcile decodes with protobuf alone."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("p4flowtable._readresponse", ["controller/p4flowtable/_readresponse.c"],
                             extra_compile_args=["-O2"], optional=True)])
