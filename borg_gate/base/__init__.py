"""The shared base: what a connection and root's admin commands both use.

Errors and exit codes, value classes, text patterns, the JSON codec, the state dir and its
one way of replacing a file, the config (and its cache), the connection's identity, events
and the counters a connection writes. It imports nothing from ``conn`` or ``admin``.
"""
