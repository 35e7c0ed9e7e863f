"""The .deb of a plugin project `taskqueue new-plugin` writes, built as it stands.

    deb = build_new_plugin_deb(workdir, "tq-fresh")

Runs `taskqueue new-plugin` from this checkout with `python` (it must import gevent and
pika: Debian's python3 with python3-gevent and python3-pika does), builds the project
with `dpkg-buildpackage -us -uc -b` in a clean environment (Debian's python3 first on
PATH, as test_packages.py builds), and fails unless lintian reports no error and no
warning. Needs the build dependencies (debhelper, dh-python, python3-all,
pybuild-plugin-pyproject, python3-setuptools, python3-wheel, lintian) and nothing else
of the host: the paths are passed in, so that it runs as well inside the Debian 13 root
or a booted systemd's machine.
"""
import os
import subprocess

#: This checkout: `taskqueue new-plugin` runs from it, not from an installed taskqueue.
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
             "DEBIAN_FRONTEND": "noninteractive"}


def _run(cmd, env=CLEAN_ENV, **kwargs):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n"
                             f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def build_new_plugin_deb(workdir, name, python="/usr/bin/python3", checkout=REPO):
    """Write plugin `name` into `workdir`/taskqueue-`name` (workdir is made if missing;
    the project directory must not exist), build it, lintian it; the .deb's path."""
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)    # apt's _apt user reads the .deb from here
    project = os.path.join(workdir, f"taskqueue-{name}")
    _run([python, "-m", "taskqueue", "new-plugin", name, "--dir", project],
         env={**CLEAN_ENV, "PYTHONPATH": checkout}, cwd=workdir)
    _run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=project)
    changes = [os.path.join(workdir, f) for f in os.listdir(workdir) if f.endswith(".changes")]
    lint = subprocess.run(["lintian", "--fail-on", "error,warning", *changes],
                          capture_output=True, text=True, env=CLEAN_ENV)
    tags = [line for line in lint.stdout.splitlines() if line.startswith(("E:", "W:"))]
    if lint.returncode != 0 or tags or len(changes) != 1:
        raise AssertionError(f"lintian on {changes} exited {lint.returncode}, tags {tags}:\n"
                             f"{lint.stdout}{lint.stderr}")
    debs = [f for f in os.listdir(workdir)
            if f.startswith(f"python3-taskqueue-{name}_") and f.endswith("_all.deb")]
    if len(debs) != 1:
        raise AssertionError(f"expected one python3-taskqueue-{name} .deb in {workdir}, "
                             f"found {sorted(os.listdir(workdir))}")
    return os.path.join(workdir, debs[0])
