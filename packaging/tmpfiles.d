# systemd-tmpfiles(5) entry for borg-gate, installed as /usr/lib/tmpfiles.d/borg-gate.conf.
# Applied at every boot and by the package's postinst (systemd-tmpfiles --create borg-gate.conf).
#
# Every backup user whose authorized_keys runs borg-gate must be in the group borg-gate
# (adduser BORGUSER borg-gate): the gate runs as that user and shares these paths with the others.
#
# /run/borg-gate: the state dir ([gate] state_dir). 3770: members create their own files here
# (slot records, counters, the borg version cache), nobody else can even look; the setgid bit
# keeps the group borg-gate on what they create, so status can read it; the sticky bit lets only
# a file's owner unlink or replace it (the gate refuses a group-writable state dir without it).
# On tmpfs, so no lock outlives a reboot.
#Type Path                          Mode User Group     Age Argument
d     /run/borg-gate                3770 root borg-gate -   -
#
# /run/borg-gate/locks: every session slot and queue ticket, as byte-range locks on this one
# file. It must belong to root: a file a member created, she could remove while sessions hold
# it, and the next gates would lock a new one and serve over the limit. Members need write
# access to take locks (the kernel's rule), which lets them hold slots as any gate would, never
# exceed the budget. Made at boot, before any login; never replace it while gates run.
f     /run/borg-gate/locks          0660 root borg-gate -   -
#
# /var/log/borg-gate: the JSON event log ([gate] log_file). The gate appends to it as whichever
# backup user connects, so the file is made here, 0660 root:borg-gate, and logrotate re-creates
# it the same way. The dir is 0750: members can append to the file but create nothing beside it.
# A group-writable dir would let a member create gate.jsonl herself in the instant between
# logrotate's rename and its create, and own everyone's events (the gates refuse a log file not
# owned by root or themselves, so that would cost events, counted as sink failures).
d     /var/log/borg-gate            0750 root borg-gate -   -
f     /var/log/borg-gate/gate.jsonl 0660 root borg-gate -   -
