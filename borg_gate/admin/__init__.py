"""root's admin commands: status, metrics, repos, check, authorize, hold and release.

They read what members and backup users write (counters, slot records, users' directories)
as hostile input. They may use ``conn`` (to compute what the gate computes) and ``base``.
"""
