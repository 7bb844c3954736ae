"""Separate network hosts on one machine: Linux network namespaces joined by veth links.

`Topology` builds a switch (a namespace holding a bridge) and one namespace per host,
each with its own loopback and one link, `eth0`, to the switch, addressed in a private
/24 that exists only inside these namespaces: the hosts share no 127.0.0.1 service
and reach nothing outside (the switch has no other link; each host's default route
leads to it, and no further). It runs commands "on" a host (`ip netns exec`), sets a
host's firewall (nftables), takes a host's link down and up, and `close()` kills every
process left in its namespaces (by id) and deletes them, whatever happened before.

Needs root and `ip` (iproute2); the firewall needs `nft` (Debian's nftables package).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

SUBNET = "10.18.0"


def unavailable_reason() -> str | None:
    """Why namespaces cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "no `ip` command (install iproute2)"
    probe = f"hiprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip()[:200]}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def firewall_reason() -> str | None:
    if shutil.which("nft") is None:
        return "no `nft` command: install Debian's nftables (apt-get install nftables)"
    return None


class Topology:
    def __init__(self, hosts: list[str]):
        self.prefix = f"hi{os.getpid() % 100000}"
        self.switch = f"{self.prefix}-switch"
        self.hosts = {name: f"{SUBNET}.{index + 1}" for index, name in enumerate(hosts)}
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def _build(self) -> None:
        self._add_namespace(self.switch)
        self.sh(self.switch, "ip link add br0 type bridge && ip link set br0 up")
        for index, (host, ip) in enumerate(self.hosts.items()):
            ns, near, far = self.ns(host), f"{self.prefix}h{index}", f"{self.prefix}s{index}"
            self._add_namespace(ns)
            _run(["ip", "link", "add", near, "type", "veth", "peer", "name", far])
            _run(["ip", "link", "set", near, "netns", ns])
            _run(["ip", "link", "set", far, "netns", self.switch])
            self.sh(ns, f"ip link set {near} name eth0 && ip addr add {ip}/24 dev eth0 && "
                        "ip link set eth0 up && ip link set lo up && "
                        # a default route on the link, which leads nowhere past the
                        # switch: Ray finds its address by routing towards 8.8.8.8
                        "ip route add default dev eth0")
            self.sh(self.switch, f"ip link set {far} master br0 && ip link set {far} up")

    def _add_namespace(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._made.append(ns)

    def sh(self, host_ns: str, script: str, **kwargs) -> subprocess.CompletedProcess:
        """Run a shell script in a namespace (a host's name or a namespace's)."""
        ns = self.ns(host_ns) if host_ns in self.hosts else host_ns
        return _run(["ip", "netns", "exec", ns, "sh", "-c", script], **kwargs)

    def run(self, host: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.ns(host), *argv], **kwargs)

    def popen(self, host: str, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv],
                                start_new_session=True, **kwargs)

    def link(self, host: str, up: bool) -> None:
        """Take `host`'s only link down (every connection to it goes silent) or up."""
        self.sh(host, f"ip link set eth0 {'up' if up else 'down'}")

    def firewall(self, host: str, source: str, open_ports: tuple[int, int] | None) -> None:
        """On `host`, drop all that `source` (a host) sends it except TCP to
        `open_ports` (None: nothing is open)."""
        allow = (f"ip saddr {self.hosts[source]} tcp dport {open_ports[0]}-{open_ports[1]} "
                 "accept\n" if open_ports else "")
        rules = (f"table inet hybrid_test {{\n chain input {{\n  type filter hook input "
                 f"priority 0; policy accept;\n  {allow}  ip saddr {self.hosts[source]} "
                 "counter drop\n }\n}\n")
        self.sh(host, "nft delete table inet hybrid_test 2>/dev/null; nft -f -", input=rules)

    def dropped(self, host: str) -> int:
        """Packets `host`'s firewall dropped so far."""
        listing = self.sh(host, "nft list table inet hybrid_test").stdout
        for line in listing.splitlines():
            if "counter packets" in line:
                return int(line.split("counter packets")[1].split()[0])
        return 0

    def close(self) -> None:
        """Kill what still runs in the namespaces, then delete them (veths go too)."""
        for ns in reversed(self._made):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            deadline = time.time() + 30
            while pids and time.time() < deadline and subprocess.run(
                    ["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                time.sleep(0.2)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)[:300]} failed: {done.stderr.strip()[:500]}")
    return done
