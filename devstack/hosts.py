"""Hypervisor hosts for tests, the demo and benchmarks.

LibvirtHost simulates one hypervisor host: a full libvirtd (plus its
virtlogd) in a private mount namespace with its own /run, /var/lib/libvirt,
/var/log/libvirt, /var/cache/libvirt and /etc/libvirt/qemu, so several hosts
run side by side on one machine without seeing each other's domains.
SystemLibvirtd runs (or reuses) the machine's ordinary qemu:///system daemon.

Both run libvirtd under `tini -s` (a subreaper): QEMU processes are then
reaped at once, as systemd does on real hosts; reparented to this machine's
PID 1 each destroy took 1.2-1.6 s instead of 0.2 s (see ENVIRONMENT.md).
"""

import grp
import logging
import os
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

from devstack.process import pid_alive, read_pid, stop_child, terminate

KVM = Path("/dev/kvm")
SYSTEM_URI = "qemu:///system"
SYSTEM_VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")
log = logging.getLogger(__name__)

# Private directory (relative to the host's root) -> where it is mounted.
PRIVATE_MOUNTS = {
    "run": "/run",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
    "etc-qemu": "/etc/libvirt/qemu",
}


def fix_kvm_permissions() -> None:
    """Let libvirt-qemu (group kvm) open /dev/kvm.

    Here /dev/kvm is root:root 0600; left so, kvm domains fail to start and
    libvirt re-probes QEMU's capabilities on every call (a restore took 52 s).
    """
    if KVM.exists():
        os.chown(KVM, -1, grp.getgrnam("kvm").gr_gid)
        KVM.chmod(0o660)


def virt_type() -> str:
    """'kvm' when QEMU (running as libvirt-qemu, group kvm) can use /dev/kvm, else 'qemu' (TCG)."""
    try:
        st = KVM.stat()
        fd = os.open(KVM, os.O_RDWR)
    except OSError:
        return "qemu"
    os.close(fd)
    group_ok = st.st_gid == grp.getgrnam("kvm").gr_gid and st.st_mode & 0o060 == 0o060
    return "kvm" if group_ok or st.st_mode & 0o006 == 0o006 else "qemu"


def open_connection(uri: str, timeout: float = 0):
    """Open a libvirt connection, retrying for up to timeout seconds."""
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


class LibvirtHost:
    """One simulated hypervisor host: libvirtd + virtlogd in a private mount namespace.

    The single child is `unshare --mount` -> bind mounts -> `tini -s -g` ->
    virtlogd and libvirtd in one process group, so SIGTERM to .pid stops
    both daemons. QEMU processes are reparented to tini (the subreaper).
    Image paths are not remapped: images_dir means the same inside and out.
    """

    def __init__(self, name: str, root_dir):
        self.name = name
        self.root = Path(root_dir)
        self.images_dir = self.root / "images"
        self.log_dir = self.root / "log"
        self.socket = self.root / "run" / "libvirt" / "libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.proc: subprocess.Popen | None = None
        self.daemon_pids: list[int] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _make_dirs(self) -> None:
        """Create the private dirs; every component must be reachable by libvirt-qemu."""
        for path in [self.root, self.images_dir, *(self.root / d for d in PRIVATE_MOUNTS)]:
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        for parent in self.root.resolve().parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                raise PermissionError(f"{parent} is not searchable by libvirt-qemu")

    def start(self, timeout: float = 60) -> "LibvirtHost":
        """Spawn the namespaced daemons and wait until the socket answers."""
        self._make_dirs()
        mounts = " && ".join(
            f"mount --bind {shlex.quote(str(self.root / src))} {shlex.quote(dst)}"
            for src, dst in PRIVATE_MOUNTS.items())
        # libvirtd restarts when it dies, as systemd's Restart= would do on a real host.
        script = f"{mounts} && exec tini -s -g -- sh -c 'virtlogd & while :; do libvirtd; sleep 0.1; done'"
        with open(self.log_dir / "daemons.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Both sockets present (virtlogd runs in the background) and libvirtd answering."""
        import libvirt
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"host {self.name}: daemons exited with {self.proc.returncode}, "
                                   f"see {self.log_dir / 'daemons.log'}")
            if self.socket.exists() and self.socket.with_name("virtlogd-sock").exists():
                try:
                    open_connection(self.uri).close()
                    break
                except libvirt.libvirtError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"host {self.name}: {self.socket} not answering after {timeout}s")
            time.sleep(0.1)
        run = self.root / "run"
        self.daemon_pids = [p for p in (read_pid(run / "libvirtd.pid"),
                                        read_pid(run / "virtlogd.pid")) if p]

    def restart_libvirtd(self, timeout: float = 60) -> None:
        """SIGKILL libvirtd (a crash); its supervisor loop starts a new one, which reattaches to the
        running QEMU processes.  Returns once the new daemon answers."""
        pidfile = self.root / "run" / "libvirtd.pid"
        old = read_pid(pidfile)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while read_pid(pidfile) in (None, old) or not pid_alive(read_pid(pidfile)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"host {self.name}: libvirtd did not come back")
            time.sleep(0.05)
        open_connection(self.uri, timeout).close()
        self.daemon_pids = [p for p in self.daemon_pids if p != old] + [read_pid(pidfile)]

    def qemu_pids(self) -> list[int]:
        """PIDs of QEMU processes this host's libvirtd started (from its pid files)."""
        pids = []
        for pidfile in (self.root / "run/libvirt/qemu").glob("*.pid"):
            pid = read_pid(pidfile)
            try:  # the file may be stale and its PID reused: check it is a QEMU
                if pid and b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except FileNotFoundError:
                pass
        return pids

    def remove_domains(self) -> None:
        """Destroy every active domain and undefine all, with their snapshot metadata."""
        import libvirt
        conn = open_connection(self.uri)
        try:
            for dom in conn.listAllDomains():
                persistent = dom.isPersistent()
                if dom.isActive():
                    dom.destroy()
                if persistent:
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                      | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                      | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        finally:
            conn.close()

    def stop(self, timeout: float = 15) -> None:
        """Remove all domains, stop both daemons, then kill leftover QEMUs by their pid files."""
        import libvirt
        if self.proc is None:
            return
        if self.proc.poll() is None and self.socket.exists():
            try:
                self.remove_domains()
            except libvirt.libvirtError as exc:  # keep stopping: the leftovers are killed below
                log.warning("host %s: removing domains failed: %s", self.name, exc)
        leftovers = self.qemu_pids()
        stop_child(self.proc, timeout)
        for pid in self.daemon_pids + leftovers + self.qemu_pids():
            terminate(pid, timeout=5)
        self.daemon_pids = []

    def __enter__(self) -> "LibvirtHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SystemLibvirtd:
    """The machine's own qemu:///system, started here when nothing answers.

    For the demo, on machines without systemd: reuses a running daemon, else
    starts `virtlogd -d` (when its socket is absent) and `tini -s -- libvirtd`
    in a new session, recording their PIDs in state_dir so that stop(), even
    from a later process, ends only what was started here.
    """

    uri = SYSTEM_URI

    def __init__(self, state_dir):
        self.state_dir = Path(state_dir)
        self.libvirtd_pidfile = self.state_dir / "libvirtd.pid"
        self.virtlogd_pidfile = self.state_dir / "virtlogd.pid"

    def ensure_running(self, timeout: float = 60) -> None:
        import libvirt
        try:
            open_connection(self.uri).close()
            return
        except libvirt.libvirtError:
            pass
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not SYSTEM_VIRTLOGD_SOCK.exists():
            subprocess.run(["virtlogd", "-d", "-p", str(self.virtlogd_pidfile)], check=True)
        with open(self.state_dir / "libvirtd.log", "ab") as log:
            proc = subprocess.Popen(["tini", "-s", "--", "libvirtd"], start_new_session=True,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.libvirtd_pidfile.write_text(f"{proc.pid}\n")
        open_connection(self.uri, timeout).close()

    def stop(self) -> None:
        """Stop only the daemons whose PIDs ensure_running recorded."""
        for pidfile, program in ((self.libvirtd_pidfile, b"libvirtd"), (self.virtlogd_pidfile, b"virtlogd")):
            pid = read_pid(pidfile)
            if pid and pid_alive(pid) and program in _cmdline(pid):  # never a PID reused since
                terminate(pid)
            pidfile.unlink(missing_ok=True)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
