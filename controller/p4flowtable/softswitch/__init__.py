"""Embedded software target: runs the BMv2 JSON p4c produced and serves P4Runtime.

pipeline.py compiles the JSON into Python callables once, at load time;
tables.py holds match-action entries; server.py serves p4.v1.P4Runtime;
ports.py moves frames on Linux interfaces; main.py is `p4ft switch`.
"""
