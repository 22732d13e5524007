"""Hosts on one machine for multi-host tests: Linux network namespaces on a bridge this module
creates, each host with its own UTS and mount namespace (hostname, a private ``.relay``
folder), ``HOME`` and ``PREFECT_HOME``.

A ``Network`` owns everything it made: a bridge, one namespace and veth pair per host, an
anchor process per host that holds its UTS and mount namespaces, the processes started on
the hosts and a folder under /tmp. ``close()`` removes all of it, also after a failure or
an interruption (SIGTERM and SIGINT are turned into ``close``); what a killed test left
behind is swept by the next ``Network`` (names carry the owner's pid).

Only the hosts' own addresses (a /24 of 10.231.0.0/16 per network) and 127.0.0.1 are ever
used: nothing routes out of the bridge.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay_settings import PROJECT_ROOT

PREFIX = "rlh"  # every namespace and bridge this module makes starts with it
_made = itertools.count()  # networks made by this process
STATE = PROJECT_ROOT / ".relay"  # bind-mounted per host: each has its own state folder


def can_make_hosts() -> str | None:
    """Why hosts cannot be made here (not root, no iproute2 or util-linux); None: they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns, unshare)"
    for tool in ("ip", "unshare", "nsenter", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def hosts_required() -> list[pytest.MarkDecorator]:
    """The mark of a multi-host test module: skipped, with its reason, where hosts cannot
    be made; with CI=true that is an error instead (CI must run them)."""
    reason = can_make_hosts()
    if reason and os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true but the multi-host tests cannot run: {reason}")
    return [
        pytest.mark.hosts,  # `make hosts-test` runs them alone, `make test` with the rest
        pytest.mark.skipif(reason is not None, reason=f"no test hosts: {reason}"),
    ]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> list[str]:
    """Remove the namespaces, links and folders of networks whose owner process is gone
    (a test killed with SIGKILL cannot clean up); returns what was removed."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = re.fullmatch(rf"{PREFIX}(\d+)-.+", name)
        if found and not _alive(int(found.group(1))):
            for pid in _netns_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        # A bridge (rlhb<pid>x<n>), or a host's link (rl<pid % 100000>x<n>v<i>) left where
        # the kernel had not yet freed the host's namespace when it was deleted.
        found = re.search(rf"\d+: ({PREFIX}b(\d+)x\d+|rl(\d+)x\d+v\d+)[:@]", line)
        if not found:
            continue
        maker = int(found.group(2) or found.group(3))
        if maker not in (os.getpid(), os.getpid() % 100000) and not _alive(maker):
            _ip("link", "del", found.group(1), check=False)
            removed.append(found.group(1))
    for folder in Path("/tmp").glob(f"{PREFIX}-*"):
        owner = folder.name.split("-")[1]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def _netns_pids(name: str) -> list[int]:
    listed = _ip("netns", "pids", name, check=False).stdout.split()
    return [int(pid) for pid in listed if pid.isdigit()]


@dataclass
class Host:
    """One host: a network namespace with its address, a UTS and mount namespace held by
    its anchor process, and its own folders."""

    name: str
    netns: str
    address: str
    link: str  # the veth end on the bridge: down cuts the host off
    folder: Path
    anchor: subprocess.Popen[bytes]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # How each process was started, so that it can be started again (``relaunch``).
    launches: dict[str, tuple[list[str], dict[str, str], str | None, bool]] = field(
        default_factory=dict
    )

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this host's HOME and PREFECT_HOME."""
        return {
            **base,
            "HOME": str(self.folder / "home"),
            "PREFECT_HOME": str(self.folder / "prefect"),
        }

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        user: str | None = None,
        restart: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Run ``command`` on this host (its namespaces, its HOME), its output to
        logs/<host>-<name>.log. ``restart``: started again a second after it exits, as
        compose's ``restart: unless-stopped`` and Kubernetes' restartPolicy do."""
        prefix = self._enter()
        if user:
            prefix += ["runuser", "-u", user, "--"]
        if restart:
            loop = 'while :; do "$@"; echo "[exited with $?: starting it again]"; sleep 1; done'
            prefix += ["sh", "-c", loop, name]
        log = (self.logs / f"{self.name}-{name}.log").open("ab")
        process = subprocess.Popen(
            [*prefix, *command],
            cwd=PROJECT_ROOT,
            env=self.env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        self.launches[name] = (command, env, user, restart)
        return process

    def _enter(self) -> list[str]:
        """nsenter into the host's namespaces, in the project root: entering a mount
        namespace moves the caller to its root, so Popen's ``cwd`` alone would not hold."""
        namespaces = ["--uts", "--mount", "--net", f"--wdns={PROJECT_ROOT}"]
        return ["nsenter", "--target", str(self.anchor.pid), *namespaces, "--"]

    def relaunch(self, name: str) -> subprocess.Popen[bytes]:
        """Start process ``name`` again as it was started before (after a kill or a stop)."""
        command, env, user, restart = self.launches[name]
        return self.start(name, command, env, user, restart)

    def log(self, name: str, since: int = 0) -> str:
        """What process ``name`` wrote so far (from byte ``since``: see ``log_size``)."""
        path = self.logs / f"{self.name}-{name}.log"
        if not path.exists():
            return ""
        with path.open("rb") as handle:
            handle.seek(since)
            return handle.read().decode(errors="replace")

    def log_size(self, name: str) -> int:
        """Where process ``name``'s log ends now: what it writes next starts there."""
        path = self.logs / f"{self.name}-{name}.log"
        return path.stat().st_size if path.exists() else 0

    def pids(self) -> list[int]:
        """Every process in this host's network namespace but its anchor."""
        return [pid for pid in _netns_pids(self.netns) if pid != self.anchor.pid]

    def kill(self) -> None:
        """SIGKILL every process on the host at once, as a host losing power would; the
        namespace and its address stay (the host can be started again). Again until none
        is left: a restart loop may fork a process between the listing and the kill."""
        deadline = time.monotonic() + 10
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)  # the kernel takes them out of the namespace as they exit
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        """SIGTERM one process (its whole group: a restart loop and what it runs), SIGKILL
        if it outlives ``timeout``; its exit code."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            return None

    def cut(self) -> None:
        """Take the host off the network (its link down); its processes keep running."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")

    def run(self, command: list[str], env: dict[str, str], timeout: float = 120.0) -> str:
        """Run ``command`` on this host to its end; its output (raises if it fails)."""
        prefix = self._enter()
        done = subprocess.run(
            [*prefix, *command],
            cwd=PROJECT_ROOT,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} on {self.name} failed: {done.stdout}{done.stderr}")
        return done.stdout


class Network:
    """A bridge and the hosts on it; everything made is removed by ``close``."""

    def __init__(self) -> None:
        reason = can_make_hosts()
        if reason:
            raise RuntimeError(f"cannot make test hosts: {reason}")
        sweep_leftovers()
        self.owner = os.getpid()
        # Several networks of one process (one per test module) never share a name.
        self.number = next(_made)
        self.subnet = 10 + (self.owner + 53 * self.number) % 240  # 10.231.<subnet>.0/24
        self.bridge = f"{PREFIX}b{self.owner}x{self.number}"
        self.gateway = f"10.231.{self.subnet}.1"  # the bridge's own address: this process
        self.folder = Path(f"/tmp/{PREFIX}-{self.owner}-{os.urandom(3).hex()}")
        self.data = self.folder / "data"  # shared by every host, as an NFS mount would be
        self.logs = self.folder / "logs"
        self.hosts: dict[str, Host] = {}
        self._closed = False
        self._previous: dict[int, Any] = {}
        for folder in (self.data, self.logs):
            folder.mkdir(parents=True)
        self.folder.chmod(0o755)
        STATE.mkdir(exist_ok=True)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._interrupted)

    def _interrupted(self, number: int, frame: object) -> None:
        self.close()
        previous = self._previous.get(number)
        if callable(previous):
            previous(number, frame)
        raise SystemExit(128 + number)

    def add(self, name: str) -> Host:
        """A new host named ``name`` (its hostname too) with the next free address."""
        index = len(self.hosts) + 10
        netns = f"{PREFIX}{self.owner}-{self.number}-{name}"
        link = f"rl{self.owner % 100000}x{self.number}v{index}"  # 15 characters at most
        address = f"10.231.{self.subnet}.{index}"
        folder = self.folder / name
        for sub in ("home", "prefect", "state"):
            (folder / sub).mkdir(parents=True)
        folder.chmod(0o755)
        _ip("netns", "add", netns)
        try:  # a host half made is removed with its namespace
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("link", "set", link, "master", self.bridge, "up")
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            # The anchor holds the host's UTS and mount namespaces; every process joins them.
            script = (
                f"hostname {name} && mount --bind {folder / 'state'} {STATE} && exec sleep infinity"
            )
            anchor = subprocess.Popen(
                ["ip", "netns", "exec", netns, "unshare", "--uts", "--mount", "sh", "-c", script],
                start_new_session=True,
            )
        except BaseException:
            _ip("netns", "del", netns, check=False)
            raise
        host = Host(name, netns, address, link, folder, anchor, self.logs)
        self.hosts[name] = host
        _wait(lambda: _hostname_of(anchor.pid) == name, 10, f"host {name} never came up")
        return host

    def close(self) -> None:
        """Kill every process on every host and remove the hosts, the bridge and the folder."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            host.kill()
            host.anchor.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.anchor.wait(timeout=10)
            _ip("netns", "del", host.netns, check=False)
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        for number, previous in self._previous.items():
            signal.signal(number, previous)


def _hostname_of(pid: int) -> str | None:
    try:
        done = subprocess.run(
            ["nsenter", "--target", str(pid), "--uts", "hostname"], capture_output=True, text=True
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def _wait(check: Callable[[], object], limit: float, why: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(why)
        time.sleep(0.1)
