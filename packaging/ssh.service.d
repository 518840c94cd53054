# An example drop-in for ssh.service, for a backup host where many clients connect in the
# same minute (README, "A herd at 02:00"). It changes sshd host-wide, which is the
# sysadmin's call: nothing installs it. To use it:
#   install -D -m 644 /usr/share/doc/borg-gate/examples/ssh.service.d/borg-gate-herd.conf \
#       /etc/systemd/system/ssh.service.d/borg-gate-herd.conf
#   systemctl daemon-reload && systemctl restart ssh
# and check with `ps -o pid,cls,rtprio,args -C sshd` (the listener FF 1, its children TS).
#
# sshd's listener only accepts and forks, but it listens with a fixed backlog of 128: while
# hundreds of handshakes keep the CPU busy, a listener at normal priority waits its turn, the
# kernel's accept queue overflows and connections are lost (the client shows
# "kex_exchange_identification: read: Connection reset by peer"). As a real-time process
# (SCHED_FIFO, the lowest priority) it accepts at once; nice -10 was not enough (a fair share
# among a thousand busy processes is still small: 950 of 1,000 served in one run). Reset on
# fork puts every process it forks (sshd -R or sshd-session, the gate, borg serve) back at
# the normal policy, so no connection, nor a client's borg, runs raised. The listener's own
# work is an accept, a fork and a poll per connection (about 2 ms of CPU each in the herd).
#
# With every connection accepted at once, their handshakes share the CPU, and each takes
# about as long as all of them together: raise LoginGraceTime with it (the drop-in's 30 s
# is for a host that authenticates its clients a few at a time; see the README).
[Service]
CPUSchedulingPolicy=fifo
CPUSchedulingPriority=1
CPUSchedulingResetOnFork=yes
