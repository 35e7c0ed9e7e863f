"""`taskqueue new-plugin NAME [--dir DIR]`: write a plugin project that works as it
stands (its package, tests, setup.py, debian/, README; the texts are plugintemplate.py's).

The names are derived from NAME and checked here, before anything is written: NAME is
the worker type (a config section, the queue worker_NAME, an entry point's name), part
of Debian package names and of a Python package name, so it takes only what all of them
take. Nothing already in the target directory is ever overwritten.
"""
import datetime
import email.utils
import os
import re
from dataclasses import dataclass

from taskqueue.cli import plugintemplate
from taskqueue.errors import InputError
from taskqueue.host.config import RESERVED_SECTIONS
from taskqueue.printable import printable

#: What a plugin name may be: lower-case letters and digits, words joined by single
#: '-'. Debian package names take [a-z0-9+.-] (no upper case, no '_'); '.' and '+' would
#: not survive as a Python package name (taskqueue_<name>, '-' becomes '_'), and '_'
#: would make a type's section read like a subgroup's (<type>_<subgroup>).
NAME_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")
#: Longest name: the package's one-line description ("taskqueue worker plugin: NAME")
#: stays within the 80 characters Debian allows a synopsis.
MAX_NAME = 40
NAME_RULE = (f"1-{MAX_NAME} lower-case letters and digits, words joined by single '-' "
             "(it names the worker type, the Debian package and the Python package)")
#: The packages taskqueue's own source builds (debian/control): a plugin's distribution
#: and Debian source taskqueue-NAME may not be one of them.
OWN_PACKAGES = frozenset({"taskqueue", "python3-taskqueue", "taskqueue-dispatcher",
                          "taskqueue-workerpool"})
#: The maintainer written into debian/ unless DEBFULLNAME and DEBEMAIL (as dch reads
#: them) say who: a placeholder the README asks the author to replace.
DEFAULT_MAINTAINER = "{dist} maintainers <{dist}@example.org>"
_MAINTAINER_NAME = re.compile(r"[^<>,\x00-\x1f\x7f]{1,100}\Z")
_MAINTAINER_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\Z")
_MARKER = re.compile(r"@[A-Z_]+@")


@dataclass(frozen=True)
class PluginNames:
    """Everything a plugin is called, derived from its name."""
    worker_type: str     # the entry point's name, its config section, queue worker_<type>
    package: str         # the Python package: taskqueue_<name>, '-' -> '_'
    distribution: str    # the Python distribution and the Debian source: taskqueue-<name>
    binary: str          # the Debian binary package: python3-taskqueue-<name>


def plugin_names(name):
    """The names of plugin `name`; ValueError saying what is wrong with it."""
    # A hostile name stays one short line: escaped, cut, its length said.
    shown = repr(printable(name[:MAX_NAME + 20])) + \
        (f" ({len(name)} characters)" if len(name) > MAX_NAME + 20 else "")
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
        raise ValueError(f"plugin name {shown} is not usable: expected {NAME_RULE}")
    if name in RESERVED_SECTIONS or name.lower() == "default":
        raise ValueError(f"plugin name {shown} is reserved: taskqueue's own config section "
                         f"or process is called so; expected a name other than "
                         f"{', '.join(sorted(RESERVED_SECTIONS, key=str.lower))}")
    distribution = f"taskqueue-{name}"
    if distribution in OWN_PACKAGES:
        raise ValueError(f"plugin name {shown} is reserved: {distribution} is one of "
                         "taskqueue's own packages")
    return PluginNames(worker_type=name, package="taskqueue_" + name.replace("-", "_"),
                       distribution=distribution, binary=f"python3-{distribution}")


def maintainer_of(names, environ):
    """The debian/ maintainer: "$DEBFULLNAME <$DEBEMAIL>" when both are set and sane
    (they go into control fields: no newline, no '<'), else DEFAULT_MAINTAINER."""
    name, mail = environ.get("DEBFULLNAME", "").strip(), environ.get("DEBEMAIL", "").strip()
    if _MAINTAINER_NAME.match(name) and _MAINTAINER_EMAIL.match(mail):
        return f"{name} <{mail}>"
    return DEFAULT_MAINTAINER.format(dist=names.distribution)


def project_files(names, maintainer, now):
    """[(relative path, text, mode)] of the project; `now`: an aware datetime."""
    values = {"@NAME@": names.worker_type, "@PACKAGE@": names.package,
              "@PACKAGE_SHORT@": names.worker_type.replace("-", "_"),
              "@DIST@": names.distribution, "@BINARY@": names.binary,
              "@VERSION@": plugintemplate.VERSION, "@MAINTAINER@": maintainer,
              "@DATE@": email.utils.format_datetime(now), "@YEAR@": str(now.year)}
    files = []
    for path, text, mode in plugintemplate.FILES:
        path, text = _fill(path, values), _fill(text, values)
        left = _MARKER.search(path + text)
        if left:   # a template's typo, never the user's input: say so loudly
            raise AssertionError(f"plugintemplate: {path} has no value for {left.group()}")
        files.append((path, text, mode))
    return files


def _fill(text, values):
    for marker, value in values.items():
        text = text.replace(marker, value)
    return text


def check_target(directory):
    """Refuse a target that is not a directory, or one that holds anything."""
    if os.path.lexists(directory):
        if not os.path.isdir(directory):
            raise InputError(f"{printable(directory)} exists and is not a directory; "
                             "expected a new or empty directory (--dir)")
        if os.listdir(directory):
            raise InputError(f"{printable(directory)} is not empty; expected a new or empty "
                             "directory (--dir), so that nothing in it is overwritten")


def write_project(directory, files):
    """Write `files` under `directory` (made, 0755, when missing). Each file is created
    anew (O_EXCL, no symlink followed: a file that appeared meanwhile is an error,
    never overwritten) and given its mode whatever the umask."""
    check_target(directory)
    _make_dir(directory)
    for path, text, mode in files:
        target = os.path.join(directory, path)
        _make_dir(os.path.dirname(target))
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(fd, mode)
            f.write(text)


def _make_dir(path):
    if not os.path.isdir(path):
        os.makedirs(path)
        os.chmod(path, 0o755)


def cmd_new_plugin(args):
    try:
        names = plugin_names(args.name)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    directory = names.distribution if args.dir is None else args.dir
    files = project_files(names, maintainer_of(names, os.environ),
                          datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0))
    try:
        write_project(directory, files)
    except OSError as exc:
        raise InputError(f"cannot write the project into {printable(directory)!r}: "
                         f"{exc.strerror or exc}") from None
    print(f"wrote {printable(directory)}: plugin {names.distribution}, worker type "
          f"{names.worker_type} ({names.package}/worker.py), {len(files)} files.\n"
          f"Test it:    cd {printable(directory)} && python3 -m pytest\n"
          f"Package it: dpkg-buildpackage -us -uc -b   (see its README.md)")
    return 0
