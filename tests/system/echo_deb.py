"""A plugin .deb for the systemd boot test: examples/echo's, built with dpkg-buildpackage.

Stand-in for tests/system/newplugin_deb.py's build_new_plugin_deb (a plugin made
by `taskqueue new-plugin`), with the same shape, so that test_systemd_boot.py
swaps one for the other in one line (PLUGIN_BUILDER there). It runs inside the
booted root, with that release's Debian tools: plain standard library, no pytest.
"""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO = os.path.join(HERE, "..", "..", "examples", "echo")
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def build_echo_deb(workdir, name, python):
    """Build the plugin `name` (only "echo" here) in `workdir`; return its .deb's path.
    `python` is the interpreter the plugin is for: pybuild builds for the release's
    python3 versions, and it must be one of them."""
    if name != "echo":
        raise ValueError(f"build_echo_deb builds examples/echo only, not {name!r}")
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    supported = subprocess.run(["py3versions", "-s"], capture_output=True, text=True,
                               check=True, env=CLEAN_ENV).stdout.split()
    if f"python{version}" not in supported:
        raise ValueError(f"{python} is Python {version}; this release builds for {supported}")
    tree = os.path.join(workdir, "taskqueue-echo")
    shutil.copytree(ECHO, tree, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    # The clean PATH: pybuild would otherwise pick up another python3.
    out = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, env=CLEAN_ENV,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"dpkg-buildpackage of {tree} exited {out.returncode}\n"
                           f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    debs = [f for f in os.listdir(workdir) if f.startswith("python3-taskqueue-echo_")
            and f.endswith(".deb")]
    if len(debs) != 1:
        raise RuntimeError(f"expected one python3-taskqueue-echo .deb in {workdir}: {debs}")
    return os.path.join(workdir, debs[0])


if __name__ == "__main__":      # echo_deb.py WORKDIR NAME: prints the .deb's path
    print(build_echo_deb(sys.argv[1], sys.argv[2], sys.executable))
