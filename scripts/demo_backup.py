"""A real backup through borg-gate: private sshd on 127.0.0.1, a test user, real borg.

Run by ``scripts/demo`` (as root). Prints each step; exits non-zero if any step fails.
"""

from __future__ import annotations

import json
import sys

from tests.e2e import harness


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    harness.require_root()
    harness.ensure_user("bgate-a")
    with harness.e2e_base() as base:
        gate = harness.install_gate(harness.CACHE)
        sshd = harness.Sshd(base / "sshd")
        sshd.start()
        try:
            site = harness.Site(sshd=sshd, gate=gate, root=base / "site")
            site.setup()
            alice = site.key("alice")
            repos = site.repo_dir("alice", owner="bgate-a")
            site.authorize("bgate-a", (alice, "--client alice"))
            step(f"sshd on 127.0.0.1:{sshd.port}; bgate-a's authorized_keys:")
            print((sshd.keys_dir / "bgate-a").read_text().strip())
            step("config.toml:")
            print(site.config_path.read_text().strip())

            repo = site.repo_url("bgate-a", repos / "laptop")
            src = harness.make_tree(base / "data")
            for args in (
                ["init", "--encryption=repokey-blake2", repo],
                ["create", "--stats", f"{repo}::demo-1", str(src)],
                ["list", repo],
            ):
                step("borg " + " ".join(args))
                result = site.borg(args, alice)
                print((result.stdout + result.stderr).strip())
                result.check()

            step("a repository outside the key's confinement:")
            result = site.borg(["list", site.repo_url("bgate-a", "/etc")], alice)
            print(result.stderr.strip(), f"(borg exit code {result.returncode})")

            step("a client asking for something else than borg serve:")
            result = site.borg(["list", repo], alice, env={"BORG_REMOTE_PATH": "sh -c id;borg"})
            print(result.stderr.strip(), f"(borg exit code {result.returncode})")

            step(f"what the gate logged ({site.log_file}):")
            for event in site.events():
                print(json.dumps({k: event.get(k) for k in ("ts", "event", "conn", "client", "argv", "reason")}))
        finally:
            sshd.stop()
    step("demo finished: backup made through the gate, refusals shown to the client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
