"""Boot a Debian root's systemd as PID 1, in namespaces of its own, over an overlay.

    with BootedRoot("/var/tmp/taskqueue-trixie/root") as system:
        system.run("systemctl", "is-active", "rabbitmq-server")

What systemd-nspawn -b does, by hand (nspawn is not installed on the CI
machine, and needs nothing that unshare does not give):

- the root is the lower layer of an overlayfs whose upper and work
  directories are in a temporary directory: the cached root stays clean, and
  whatever the booted system writes goes when the upper directory is removed;
- new pid, mount, uts, ipc, net and cgroup namespaces: systemd is PID 1 of its
  own pid namespace, its network is a loopback of its own (systemd brings it
  up), so its RabbitMQ listens on its own 127.0.0.1:5672 and this machine's
  broker is never touched;
- a cgroup of its own under this machine's cgroup2 hierarchy (the unified one
  of a hybrid host: /sys/fs/cgroup/unified), made the root of its cgroup
  namespace and mounted at its /sys/fs/cgroup, where systemd makes its slices;
- /proc/sys and /sys read-only (the kernel's settings are this machine's:
  systemd-sysctl and the like must not change them) and a /dev of its own
  with only the usual devices, as nspawn gives a container; `container=` in
  PID 1's environment tells systemd it is one (no udev, no getty).

Commands run inside through nsenter into those namespaces and the root.
Teardown is by pid: SIGKILL to the namespace's PID 1 ends every process in it
and with them the mount namespace (the overlay was never mounted outside it);
then the cgroup and the temporary directory are removed.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

#: What PID 1 runs before it becomes systemd: mount the overlay and what a
#: container needs ($1 root, $2 upper, $3 work, $4 mount point, $5 console file),
#: pivot into the overlay and exec systemd there.
_INIT = r'''
set -eu
R=$1 UP=$2 WORK=$3 M=$4 CONSOLE=$5
mount -t overlay overlay -o "lowerdir=$R,upperdir=$UP,workdir=$WORK" "$M"
mount -t proc proc "$M/proc"
mount --bind "$M/proc/sys" "$M/proc/sys"
mount -o remount,bind,ro "$M/proc/sys"
if [ -e "$M/proc/sysrq-trigger" ]; then
    mount --bind "$M/proc/sysrq-trigger" "$M/proc/sysrq-trigger"
    mount -o remount,bind,ro "$M/proc/sysrq-trigger"
fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$M/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$M/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid dev "$M/dev"
for d in null zero full random urandom tty; do
    touch "$M/dev/$d"
    mount --bind "/dev/$d" "$M/dev/$d"
done
mkdir "$M/dev/pts" "$M/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$M/dev/pts"
ln -s pts/ptmx "$M/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$M/dev/shm"
# What systemd writes to the console lands in a file this machine can read.
touch "$M/dev/console"
mount --bind "$CONSOLE" "$M/dev/console"
cd "$M"
pivot_root . .
umount -l .
exec env -i container=taskqueue-test /lib/systemd/systemd
'''

#: nsenter's flags for every namespace of the booted system, its root and cwd.
_NSENTER = ["-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
       "DEBIAN_FRONTEND": "noninteractive"}


class BootError(Exception):
    """The root could not be booted, or did not come up."""


def cgroup2_base():
    """This machine's cgroup2 hierarchy: /sys/fs/cgroup on a unified host, its
    unified part on a hybrid one; None when there is none."""
    for path in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(os.path.join(path, "cgroup.procs")) and \
                os.path.exists(os.path.join(path, "cgroup.subtree_control")):
            return path
    return None


def cannot_boot():
    """Why a root cannot be booted here (a sentence), or None."""
    if os.getuid() != 0:
        return "booting a root's systemd needs root (namespaces, mounts, cgroups)"
    if cgroup2_base() is None:
        return "this machine has no cgroup2 hierarchy for the booted systemd"
    for tool in ("unshare", "nsenter", "pivot_root"):
        if shutil.which(tool, path=ENV["PATH"]) is None:
            return f"{tool} (util-linux) is not installed"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "the kernel has no overlayfs"
    return None


class BootedRoot:
    """A Debian root booted with its own systemd as PID 1 (see the module's doc)."""

    def __init__(self, root, mask=(), boot_timeout=120):
        self.root = os.path.abspath(root)
        self.mask = mask            # units never to start (e.g. an enabled prometheus)
        self.boot_timeout = boot_timeout
        self.tmp = self.cgroup = self.unshare = self.pid = None
        self.seconds = None         # how long the boot took, once up

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        # The overlay's options are a comma-separated list with ':' between lower layers.
        if any(c in self.root for c in ",:\\\n"):
            raise BootError(f"{self.root}: a root path with ',', ':', '\\' or a newline "
                            "cannot be an overlay's lower layer")
        for unit in self.mask:
            if not unit or "/" in unit or unit.startswith("."):
                raise BootError(f"cannot mask {unit!r}: not a unit name")
        if not os.path.isfile(os.path.join(self.root, "lib/systemd/systemd")):
            raise BootError(f"{self.root}: no lib/systemd/systemd (package systemd) in the root")
        started = time.monotonic()
        self.tmp = tempfile.mkdtemp(prefix="taskqueue-boot-", dir="/var/tmp")
        upper, work, merged = (os.path.join(self.tmp, d) for d in ("upper", "work", "merged"))
        for d in (upper, work, merged):
            os.mkdir(d)
        # Masked in the upper layer before the boot: the root's own files stay as they are.
        os.makedirs(os.path.join(upper, "etc/systemd/system"))
        for unit in self.mask:
            os.symlink("/dev/null", os.path.join(upper, "etc/systemd/system", unit))
        self.console = os.path.join(self.tmp, "console.log")
        open(self.console, "w").close()
        self.cgroup = os.path.join(cgroup2_base(), os.path.basename(self.tmp))
        os.mkdir(self.cgroup)
        procs = os.path.join(self.cgroup, "cgroup.procs")

        def into_cgroup():      # in the child, before unshare: the cgroup namespace's root
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        with open(os.path.join(self.tmp, "unshare.log"), "w") as log:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup",
                 "--propagation", "private", "sh", "-c", _INIT, "init",
                 self.root, upper, work, merged, self.console],
                env=ENV, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=into_cgroup, start_new_session=True)
        self.pid = self._wait(self._init_pid, 10, "the namespace's PID 1")
        self._wait(lambda: self._state() in ("running", "degraded"), self.boot_timeout,
                   "systemctl is-system-running: running or degraded")
        self.seconds = time.monotonic() - started

    def _init_pid(self):
        """unshare's one child: PID 1 of the new pid namespace, as this machine sees it."""
        try:
            with open(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children") as f:
                children = f.read().split()
        except FileNotFoundError:
            children = []
        return int(children[0]) if children else None

    def _state(self):
        out = self.run("systemctl", "is-system-running", check=False, timeout=30)
        return out.stdout.strip()

    def _wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if self.unshare.poll() is not None:
                raise BootError(f"the booted system ended (exit {self.unshare.returncode}) "
                                f"while waiting for {what}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise BootError(f"timed out after {timeout}s waiting for {what}\n"
                                f"{self.diagnostics()}")
            time.sleep(0.2)
        return result

    def run(self, *cmd, check=True, timeout=600, input=None):
        """Run `cmd` inside: its namespaces, its root, a clean environment."""
        if self.pid is None:
            raise BootError("not booted")
        out = subprocess.run(["nsenter", "-t", str(self.pid), *_NSENTER, "env", "-i",
                              *[f"{k}={v}" for k, v in ENV.items()], *cmd],
                             capture_output=True, text=True, env=ENV, timeout=timeout,
                             input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise BootError(f"{' '.join(cmd)} exited {out.returncode} in {self.root}\n"
                            f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
        return out

    def path(self, inside):
        """The host's path to `inside` (absolute) in the booted system's root."""
        return f"/proc/{self.pid}/root{inside}"

    def journal(self, lines=60, unit=None):
        if self.pid is None or self.unshare.poll() is not None:
            return "(no journal: the system is not running)"
        args = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        out = self.run(*args, *(["-u", unit] if unit else []), check=False, timeout=30)
        return out.stdout + out.stderr

    def diagnostics(self):
        """What to show when the boot failed: unshare's output, the console, the journal."""
        parts = []
        for name in ("unshare.log", "console.log"):
            try:
                with open(os.path.join(self.tmp, name), errors="replace") as f:
                    parts.append(f"--- {name} (tail)\n" + "".join(f.readlines()[-40:]))
            except OSError:
                pass
        if self.pid is not None:
            failed = self.run("systemctl", "--failed", "--no-pager", check=False, timeout=30) \
                if self.unshare.poll() is None else None
            if failed is not None:
                parts.append("--- systemctl --failed\n" + failed.stdout + failed.stderr)
            parts.append("--- journal (tail)\n" + self.journal())
        return "\n".join(parts)

    def stop(self):
        """Kill PID 1 of the namespace (and so all in it), then remove the cgroup and files."""
        if self.unshare is not None:
            if self.pid is None:
                self.pid = self._init_pid()
            if self.pid is not None and self.unshare.poll() is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.unshare.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.unshare.pid, signal.SIGKILL)
                self.unshare.wait(10)
        if self.cgroup is not None and os.path.isdir(self.cgroup):
            self._remove_cgroup()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.unshare = self.pid = self.tmp = self.cgroup = None

    def _remove_cgroup(self):
        """Remove the cgroup and systemd's under it, deepest first, once emptied
        (the killed processes leave them a moment after they die)."""
        deadline = time.monotonic() + 30
        while True:
            for directory, _, _ in sorted(os.walk(self.cgroup), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
            if not os.path.isdir(self.cgroup):
                return
            if time.monotonic() > deadline:
                raise BootError(f"{self.cgroup} is still in use 30s after its PID 1 was killed")
            time.sleep(0.1)


def main(argv):
    """tests/system/bootroot.py ROOT [COMMAND...]: boot ROOT, run COMMAND inside
    (default: systemctl status), tear it down."""
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: bootroot.py ROOT [COMMAND...]")
    reason = cannot_boot()
    if reason:
        sys.exit(f"bootroot.py: {reason}")
    with BootedRoot(argv[0], mask=("prometheus.service",)) as system:
        print(f"bootroot.py: {argv[0]} up in {system.seconds:.1f}s", file=sys.stderr)
        out = system.run(*(argv[1:] or ["systemctl", "status", "--no-pager"]), check=False)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
    return out.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
