"""Whether a path taskqueue uses as root is root's alone, and opening one without
following a link someone else planted.

A root supervisor that reads a file another user can change (the file itself,
or a directory or link on its way, where that user could put another file in
its place) does what that user writes: `user: root` in a config, a password
file pointing at /etc/shadow. `writable_by_others` says who could, walking the
path as the kernel does (links followed and checked one by one), never
opening anything. A directory every user may write is fine only when sticky
(/tmp): there, nobody may rename or remove another user's entry. Pure
apart from lstat/readlink; no logging.
"""
import errno
import grp
import os
import pwd
import stat

#: The uids whose files and directories a root supervisor trusts.
ROOT_ONLY = (0,)
#: Links followed on one path before giving up (the kernel's limit).
MAX_LINKS = 40


def _user(uid):
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid):
    try:
        return f"group {grp.getgrgid(gid).gr_name}"
    except KeyError:
        return f"group {gid}"


def _others_may_write(st):
    """Who besides the owner may write this inode: 'every user', a group, or None.
    A group-writable entry of group root (gid 0) is root's still."""
    if st.st_mode & 0o002:
        return "every user"
    if st.st_mode & 0o020 and st.st_gid != 0:
        return _group(st.st_gid)
    return None


def _problem(path, st, whole, trusted):
    """Why `path` (a directory on the way to `whole`, or `whole` itself) is not trusted."""
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) \
        else "file"
    where = path if path == whole else f"{path} ({kind} on the way to {whole})"
    if st.st_uid not in trusted:
        return (f"{where} belongs to {_user(st.st_uid)}, who could change what taskqueue "
                f"reads there; chown root {path}")
    writers = None if stat.S_ISLNK(st.st_mode) else _others_may_write(st)
    if writers is None:
        return None
    if stat.S_ISDIR(st.st_mode) and path != whole and st.st_mode & stat.S_ISVTX:
        return None   # sticky: others may add entries, not replace ours (checked next)
    mode = f"{stat.S_IMODE(st.st_mode):04o}"
    if stat.S_ISDIR(st.st_mode) and path != whole:
        return (f"{where} is writable by {writers} (mode {mode}), who could put another "
                f"file in its place; chmod go-w {path}, or keep the file elsewhere")
    return f"{where} is writable by {writers} (mode {mode}); chmod go-w {path}"


def writable_by_others(path, trusted=ROOT_ONLY, of=None):
    """Why a user whose uid is not in `trusted` could change what the absolute `path`
    names (the file, or a directory or link on its way is theirs or writable by them),
    as one sentence naming the culprit and the fix; None when nobody else can.
    `of`: `path` is the directory of that file, which is yet to be made (a sticky
    directory is fine then, as for any directory on the way).
    A path that cannot be walked (missing, no search permission) gives its OSError."""
    pending = [part for part in reversed(path.split("/")) if part]
    current, links = "/", 0
    problem = _problem("/", os.lstat("/"), of or path, trusted)
    while pending and problem is None:
        name = pending.pop()
        if name in (".", ""):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        step = os.path.join(current, name)
        st = os.lstat(step)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return f"{path}: too many links on its way (more than {MAX_LINKS})"
            problem = _problem(step, st, of or path, trusted)
            target = os.readlink(step)
            pending.extend(part for part in reversed(target.split("/")) if part)
            if target.startswith("/"):
                current = "/"
            continue
        problem = _problem(step, st, of or (step if not pending else path), trusted)
        current = step
    return problem


def refuse_link(path, st):
    """An OSError when `st` (an lstat of `path`) is a symbolic link, else None."""
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"{path} is a symbolic link; taskqueue never follows one "
                                   "here (name the real path)")


def check_own(path, st):
    """OSError unless `st` (of `path`) belongs to this process's user or to root:
    a file or directory someone else made where taskqueue would have made its own."""
    if st.st_uid not in (os.geteuid(), 0):
        raise OSError(errno.EPERM, f"{path} belongs to {_user(st.st_uid)}, not to taskqueue's "
                                   "user or root: someone else made it; remove it")


def open_append(path, mode):
    """An fd appending to the regular file `path`, created with `mode` if missing, never
    through a symbolic link, never a file another user made; as root, never in a
    directory a user other than root could change. OSError saying why not."""
    if os.geteuid() == 0:
        problem = writable_by_others(os.path.dirname(os.path.abspath(path)), of=path)
        if problem is not None:
            raise OSError(errno.EPERM, problem)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC | os.O_NOCTTY, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_link(path, os.lstat(path))
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        check_own(path, st)
    except OSError:
        os.close(fd)
        raise
    return fd


def safe_directory(path, mode=0o755):
    """Make the directory `path` if missing (mode `mode`), and check that it is a real
    directory (no link) of taskqueue's user or root that no one else may write; as
    root, the directories on its way too. OSError saying why not."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.mkdir(path, mode)
    st = os.lstat(path)
    refuse_link(path, st)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory")
    check_own(path, st)
    writers = _others_may_write(st)
    if writers is not None:
        raise OSError(errno.EPERM, f"{path} is writable by {writers} (mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}); chmod go-w {path}")
    if os.geteuid() == 0:
        problem = writable_by_others(path)
        if problem is not None:
            raise OSError(errno.EPERM, problem)
    return st
