"""Ray in simulation listens on loopback only: no GCS, raylet, worker or agent port on another interface."""

from __future__ import annotations

import io
import ipaddress
import os
import sys
import threading
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from fedgin.federation.statistics import run_statistics
from fedgin.processes import descendants
from test_federation import fl_config


def listening(pid: int) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket listening in `pid` and the processes it started."""
    found = []
    for member in [pid, *descendants(pid)]:
        try:
            connections = psutil.Process(member).net_connections(kind="tcp")
        except psutil.Error:  # ended meanwhile
            continue
        found += [(member, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


def on_loopback(address: str) -> bool:
    """127.0.0.0/8 and ::1, also as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def exposed(pid: int) -> list[tuple[int, str, int]]:
    """The listening sockets of `pid`'s process tree reachable from outside the host."""
    return [socket for socket in listening(pid) if not on_loopback(socket[1])]


def test_loopback_addresses() -> None:
    assert all(map(on_loopback, ["127.0.0.1", "127.8.0.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(on_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2", "fe80::1%eth0"]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_simulation_listens_on_loopback_only(caches: dict[str, Path], tmp_path: Path) -> None:
    """A real Ray simulation (federated statistics, the shortest run): its process tree's listening TCP
    sockets, sampled while Ray runs, are all on loopback, and the dashboard is not among them."""
    config = fl_config(caches, tmp_path / "run")
    samples: list[list[tuple[int, str, int]]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(listening(os.getpid()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run_statistics(config, Console(file=io.StringIO()), tmp_path / "stats")
    finally:
        done.set()
        sampler.join()
    seen = {socket for found in samples for socket in found}
    ray_sockets = {socket for socket in seen if socket[0] != os.getpid()}
    assert len(ray_sockets) >= 3, seen  # the GCS, the raylet and a worker at least: Ray was sampled running
    assert [socket for socket in seen if not on_loopback(socket[1])] == []
    assert 8265 not in {port for _, _, port in seen}  # Ray's dashboard port
