"""borg-gate: the forced command between sshd and ``borg serve``."""

__version__ = "0.1.0"
