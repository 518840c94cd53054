"""The connection path: what sshd's forced command runs, once per connection, as the backup user.

Everything here runs with the client's input in hand, so this package and ``base`` are what a
security review reads. It never imports ``admin`` (tests/test_layout.py holds it to that).
"""
