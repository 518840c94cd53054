"""The same repository operations in each borg family's words, for the client side of the e2e tests.

Families (platform_facts.borg2_family): borg 1.x (``repo::archive``); 2.0 b1-b9 (``-r repo``,
``rcreate``/``rlist``, ``delete -a``); b10-b21 (``repo-create``/``repo-list``, ssh://); b22+
(the same verbs over rest://, ``prune --keep``; b23+ has no ``none`` encryption). From b13 an
absolute path after ``ssh://host`` needs ``//`` (the first "/" separates). Checked against each tag's archiver in
borg's source (b19: delete NAME, prune --keep-last, repo-list --short prints archive ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from borg_gate.conn.versions import BorgVersion
from tests.platform_facts import borg2_family

B13, B22, B25 = (BorgVersion.parse(v) for v in ("2.0.0b13", "2.0.0b22", "2.0.0b25"))


@dataclass(frozen=True)
class Cli:
    version: str

    @property
    def family(self) -> str:
        return borg2_family(self.version)

    @property
    def rest(self) -> bool:
        return self.family == "2-rest"

    def _on(self, repo: str, verb: list[str], archive: str | None = None, rest: list[str] | None = None) -> list[str]:
        if self.family == "1":
            return [*verb, f"{repo}::{archive}" if archive else repo, *(rest or [])]
        return ["-r", repo, *verb, *([archive] if archive else []), *(rest or [])]

    def url(self, authority: str, path: str | Path) -> str:
        """The URL of an absolute path: from 2.0.0b13 the "/" after the host is a separator.

        2.0.0b22 reaches ``serve --rest`` with ``rest://``; 2.0.0b25 has no ``rest://`` any more
        (parseformat.Location: ``ssh://`` is REST over ssh, legacy RPC only with --from-borg1, and
        an unknown scheme is a local path).
        """
        scheme = "rest" if self.rest and BorgVersion.parse(self.version) < B25 else "ssh"
        sep = "/" if self.family != "1" and BorgVersion.parse(self.version) >= B13 else ""
        return f"{scheme}://{authority}{sep}{path}"

    def init(self, repo: str) -> list[str]:
        verb = {"1": "init", "2-rcreate": "rcreate"}.get(self.family, "repo-create")
        # 2.0.0b23+ dropped "none" (#9104): authenticated-sha256 is the nearest, with a passphrase
        mode = "authenticated-sha256" if BorgVersion.parse(self.version) > B22 else "none"
        return self._on(repo, [verb, f"--encryption={mode}"])

    def create(self, repo: str, archive: str, src: str) -> list[str]:
        return self._on(repo, ["create"], archive, [src])

    def names(self, repo: str) -> list[str]:
        """Archive names, one per line (b10+'s --short lists archive ids)."""
        verb = {
            "1": ["list", "--short"],
            "2-rcreate": ["rlist", "--short"],
        }.get(self.family, ["repo-list", "--format={archive}{NL}"])
        return self._on(repo, verb)

    def extract(self, repo: str, archive: str) -> list[str]:
        return self._on(repo, ["extract"], archive)

    def check(self, repo: str) -> list[str]:
        return self._on(repo, ["check"])

    def prune_keep_last(self, repo: str, n: int) -> list[str]:
        return self._on(repo, ["prune", f"{'--keep' if self.rest else '--keep-last'}={n}"])

    def delete(self, repo: str, archive: str) -> list[str]:
        if self.family == "2-rcreate":
            return self._on(repo, ["delete", "-a", archive])
        return self._on(repo, ["delete"], archive)

    def prunes_per_series(self) -> bool:
        """2.0.0b25's prune keeps N archives per name (a series): a1 and a2 are two series of one."""
        return BorgVersion.parse(self.version) >= B25

    def compacts_by_itself(self) -> bool:
        return self.family == "2-rcreate"  # b5's delete compacts

    def compact(self, repo: str) -> list[str]:
        return self._on(repo, ["compact"])


def borg_error(returncode: int) -> bool:
    """An error exit of a borg client: 2, or one of borg 2's (and 1.4 with BORG_EXIT_CODES=modern) 3-99.

    Debian 13's 2.0.0b19 exits 80 for a closed connection and 83 for a path not allowed.
    """
    return 2 <= returncode <= 99
