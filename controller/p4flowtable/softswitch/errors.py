"""What loading a BMv2 JSON can fail with (pipeline.py, tables.py)."""


class UnsupportedConstruct(ValueError):
    """The JSON uses something the embedded target does not implement."""


class PipelineError(ValueError):
    """The JSON is malformed."""
