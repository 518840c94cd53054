# sshd_config drop-in for borg-gate: copy to /etc/ssh/sshd_config.d/borg-gate.conf, adjust
# MaxStartups, check with `sshd -t`, then `systemctl reload ssh`. Debian's sshd_config includes
# sshd_config.d/*.conf at its top, and for each keyword the first value sshd reads wins, except
# MaxStartups, where the last one does: a MaxStartups in sshd_config itself overrides this one
# (`sshd -T | grep maxstartups` shows the one in effect; `borg-gate check` reads it so too).
#
# Applies to the backup users: the members of the group borg-gate (the group that also shares
# the gate's state dir /run/borg-gate), whose authorized_keys lines run borg-gate.

# MaxStartups is host-wide and cannot go in a Match block. It limits connections that have
# not authenticated yet; above "start" sshd drops new ones at random ("rate" percent, rising
# to all at "full"). The client then sees "Connection closed by remote host" without ever
# reaching the gate. Connections queued in the gate for a session slot have authenticated
# and do not count, so size it for the burst of clients that connect at the same moment,
# not for the budget: at least [limits] max_sessions plus the clients whose timers fire
# together (e.g. every client's cron at 02:00), and borg 2.0b22+ makes several ssh
# connections per command (5 for repo-create + create + repo-list) and retries a lost one
# 3 times. The default 10:30:100 drops clients already when 10 authenticate at once.
MaxStartups 100:30:300

# Seconds a connection may spend authenticating; with a high MaxStartups, keep this short
# so that stuck handshakes do not hold their place for the default 2 minutes.
LoginGraceTime 30

Match Group borg-gate
	# Writes a 0600 file naming the key used and hands its path to the gate in
	# SSH_USER_AUTH: the gate logs the key's SHA256 fingerprint with every event.
	ExposeAuthInfo yes

	# borg's docs (borg serve, "SSH Configuration"): a keepalive every 10 s, give up after
	# 30 missed ones (300 s). Without it a client that vanished (network outage) leaves
	# borg serve running, holding the repository lock and one of the gate's session slots,
	# until TCP gives up hours later. Clients should run with --lock-wait 600 to outwait it.
	ClientAliveInterval 10
	ClientAliveCountMax 30

	# borg needs one session on stdin/stdout, nothing else: no port, X11, agent or
	# unix-socket forwarding (the key line's `restrict` says the same per key; this holds
	# even for a key someone adds without it).
	DisableForwarding yes
	PermitTTY no
	PermitUserRC no
	PasswordAuthentication no
	KbdInteractiveAuthentication no
