"""The lean process a queued connection becomes: ``python3 -IS .../borg_gate/conn/waiter.py FD``.

The gate execs this (session.become_waiter) with the connection's Seat in descriptor FD.
Run as a script under -I (no script dir on the path), it puts the package's own parent
dir on the path and hands over to session.resume; it imports nothing else itself.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from borg_gate.conn import session

    session.resume(int(sys.argv[1]))
