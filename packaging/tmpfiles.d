# systemd-tmpfiles(5) entry for borg-gate, installed as /usr/lib/tmpfiles.d/borg-gate.conf.
# Applied at every boot and by the package's postinst (systemd-tmpfiles --create borg-gate.conf).
#
# Every backup user whose authorized_keys runs borg-gate must be in the group borg-gate
# (adduser BORGUSER borg-gate): the gate runs as that user and shares these paths with the others.
#
# /run/borg-gate: the state dir ([gate] state_dir): session-slot lock files and the borg version
# cache. 3770: members create and lock files here, nobody else can even look; the setgid bit
# keeps the group borg-gate on what they create; the sticky bit lets only a file's owner unlink
# or replace it (else a member could unlink a held slot file and run a session over the limit;
# the gate refuses a group-writable state dir without it). On tmpfs, so no lock outlives a reboot.
#Type Path                          Mode User Group     Age Argument
d     /run/borg-gate                3770 root borg-gate -   -
#
# /var/log/borg-gate: the JSON event log ([gate] log_file). The gate appends to it as whichever
# backup user connects, so the file is made here, 0660 root:borg-gate, and logrotate re-creates
# it the same way. The dir is 0750: members can append to the file but create nothing beside it.
# A group-writable dir would let a member create gate.jsonl herself in the instant between
# logrotate's rename and its create, and own everyone's events (the gates refuse a log file not
# owned by root or themselves, so that would cost events, counted as sink failures).
d     /var/log/borg-gate            0750 root borg-gate -   -
f     /var/log/borg-gate/gate.jsonl 0660 root borg-gate -   -
