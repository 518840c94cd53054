"""Debian's node_exporter (``prometheus-node-exporter``) on 127.0.0.1, serving a test's textfile dir.

Used by the monitoring files' tests (what the self-monitoring rules rely on) and by the end-to-end
suite (real backups through the gate, scraped over HTTP). Only the textfile collector runs; the
process is stopped when the ``with`` block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import wait_for

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
# 127.0.0.1 only, whatever http_proxy the environment sets
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def version() -> str:
    """``node_exporter, version 1.5.0 (branch: …)`` → ``1.5.0``."""
    out = subprocess.run([NODE_EXPORTER, "--version"], capture_output=True, text=True, check=True)
    first = (out.stdout or out.stderr).splitlines()[0]
    return first.split("version ", 1)[1].split()[0]


@contextlib.contextmanager
def serving(textfile: Path, log: Path) -> Iterator[str]:
    """node_exporter reading ``textfile`` (its log in ``log``); yields the /metrics URL."""
    port = free_port()
    with log.open("wb") as err:  # a file, not a pipe nobody reads: its error lines never block it
        proc = subprocess.Popen(
            [
                NODE_EXPORTER,
                f"--web.listen-address=127.0.0.1:{port}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={textfile}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            with _LOCAL.open(url, timeout=5):
                return True
        except OSError:
            return False

    try:
        wait_for(up, "node_exporter listening", timeout=30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fetch(url: str) -> str:
    with _LOCAL.open(url, timeout=30) as resp:
        text: str = resp.read().decode()
    return text


def scrape(url: str) -> Samples:
    """Every sample of one scrape, keyed by (name, sorted labels), parsed as Prometheus would."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(fetch(url))
        for s in family.samples
    }
