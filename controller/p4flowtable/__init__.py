"""p4flowtable: the Linux netfilter flowtable fast path on a P4 switch."""

__version__ = "0.1.0"
