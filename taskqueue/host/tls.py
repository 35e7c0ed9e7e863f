"""TLS contexts for the broker connection, and what their failures mean.

A context reads the CA bundle, the client certificate and its key when it is
built. It is built when the config is loaded (by the supervisor, before any
fork, still privileged), and kept here: a forked child that keeps the
supervisor's user inherits the context. A child that runs as another user
starts a fresh interpreter (childexec.py): it gets the files' contents
(`pems`) from the supervisor in memory-only files (memfd), and builds its
context from them (`adopt`); the key is never written to disk nor put in the
environment. Verification of the certificate and of
the host name is always on; nothing here turns it off.
"""
import os
import re
import ssl

from taskqueue.errors import TlsFileError
from taskqueue.host import keptsecrets

#: Built contexts, by (tls_ca_file, tls_cert_file, tls_key_file): forked children inherit them.
_CONTEXTS = {}
#: The contents of those files, by the same key, as read when the context was built:
#: what a child that cannot read them gets (childexec.py).
_PEMS = {}


def build(ca_file=None, cert_file=None, key_file=None):
    """A fresh client context verifying the broker (against `ca_file`, else the
    system's CAs) and its host name; TlsFileError naming the file at fault."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    # create_default_context already requires both; said again so no default ever loosens it.
    context.verify_mode, context.check_hostname = ssl.CERT_REQUIRED, True
    for option, path, marker in (("tls_ca_file", ca_file, "CERTIFICATE-----"),
                                 ("tls_cert_file", cert_file, "CERTIFICATE-----"),
                                 ("tls_key_file", key_file, "PRIVATE KEY-----")):
        if path is not None:
            _check_pem(option, path, marker)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise TlsFileError("tls_ca_file", ca_file, f"not a usable CA bundle: {_reason(exc)}") from None
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise TlsFileError("tls_key_file", key_file,
                                   f"this key does not match the certificate in {cert_file}") from None
            raise TlsFileError("tls_cert_file", cert_file,
                               f"certificate and key do not load: {_reason(exc)}") from None
        except OSError as exc:
            raise TlsFileError("tls_cert_file", cert_file, _reason(exc),
                               denied=isinstance(exc, PermissionError)) from None
    return context


def _check_pem(option, path, marker):
    """The file is readable and holds a PEM block of the expected kind."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20)
    except FileNotFoundError:
        raise TlsFileError(option, path, "no such file") from None
    except OSError as exc:   # permission denied, a directory...
        raise TlsFileError(option, path, f"cannot read it: {exc.strerror or exc}",
                           denied=isinstance(exc, PermissionError)) from None
    if b"-----BEGIN " not in text or marker.encode() not in text:
        kind = "private key" if "KEY" in marker else "certificate"
        raise TlsFileError(option, path, f"not a PEM file holding a {kind}")


def _reason(exc):
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def load(ca_file=None, cert_file=None, key_file=None):
    """Build the context for these files and keep it for connection(): the config
    loader calls this at every load, so a reload reads changed files anew. A reload
    after the privilege drop that may not read them any more (a key of root's, 0600)
    keeps the context built at start (keptsecrets.py)."""
    key = (ca_file, cert_file, key_file)
    files = ", ".join(f"{option} {path}" for option, path in zip(
        ("tls_ca_file", "tls_cert_file", "tls_key_file"), key) if path)
    where = f"[amqp] {files or 'TLS with the system CAs'}"
    _CONTEXTS[key] = keptsecrets.read(("tls",) + key, lambda: build(*key), where)
    # What a user-switching child gets (childexec.py): kept alike after the drop.
    _PEMS[key] = keptsecrets.read(("tls-pems",) + key,
                                  lambda: tuple(_read(path) for path in key), where)
    return _CONTEXTS[key]


def _read(path):
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read(1 << 20)


def pems(ca_file=None, cert_file=None, key_file=None):
    """The contents of the files of a kept context (None for each file not given),
    or None when no load saw them."""
    return _PEMS.get((ca_file, cert_file, key_file))


def adopt(key, contents):
    """Build and keep the context for the files `key` (ca, cert, key paths) from their
    `contents`, in a process that may not read the files themselves: each is handed
    to OpenSSL as a memory-only file, closed once loaded."""
    fds = []
    try:
        paths = []
        for data in contents:
            if data is None:
                paths.append(None)
                continue
            fd = os.memfd_create("taskqueue-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
            paths.append(f"/proc/self/fd/{fd}")
        _CONTEXTS[tuple(key)] = build(*paths)
    finally:
        for fd in fds:
            os.close(fd)


def context(ca_file=None, cert_file=None, key_file=None):
    """The kept context for these files; built now if no load saw them (a process
    that did not load the config itself), which needs the files to be readable."""
    key = (ca_file, cert_file, key_file)
    if key not in _CONTEXTS:
        return load(*key)
    return _CONTEXTS[key]


def explain(exc, settings, host):
    """A TLS failure found in `exc` (or its causes) in words naming the file or name
    at fault, e.g. "certificate verify failed: unable to get local issuer
    certificate (tls_ca_file /etc/taskqueue/ca.pem)"; None when it is not one."""
    found = _find_ssl_error(exc)
    if found is None:
        # An alert after the handshake (TLS 1.3 refuses a client certificate so)
        # reaches us only as text inside pika's StreamLostError.
        text = repr(exc)
        alert = _ALERT.search(text)
        if alert is not None:
            return _refused(alert.group(1), settings)
        return _closed(settings) if _EOF.search(text) else None
    if isinstance(found, ssl.SSLCertVerificationError):
        message = found.verify_message or str(found)
        if "ostname mismatch" in message or "IP address mismatch" in message:
            name = settings.tls_server_name
            where = f"tls_server_name {name}" if name else f"host {host}; set tls_server_name " \
                "to the name in the broker's certificate"
            return f"certificate verify failed: {message} ({where})"
        where = f"tls_ca_file {settings.tls_ca_file}" if settings.tls_ca_file else \
            "the system's CAs; set tls_ca_file"
        if getattr(found, "verify_code", None) in OUT_OF_DATE_CODES:   # set by a handshake
            # The CA file is right; a certificate is out of its dates (or a clock is wrong).
            where = "the broker's certificate, or a CA certificate of " + (
                f"tls_ca_file {settings.tls_ca_file}" if settings.tls_ca_file else "the system's CAs")
        return f"certificate verify failed: {message} ({where})"
    alert = _ALERT.search(str(found))
    if alert is not None:
        return _refused(alert.group(1), settings)
    if isinstance(found, ssl.SSLEOFError):
        return _closed(settings)
    if found.reason in NOT_TLS_REASONS:
        return f"TLS failed: {found.reason} (the broker's port does not speak TLS: a plaintext port?)"
    return f"TLS failed: {found.reason or found}"


#: OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED.
OUT_OF_DATE_CODES = (9, 10)

#: What OpenSSL says when the peer answers the TLS hello in plaintext (AMQP's header).
NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                   "UNKNOWN_PROTOCOL")


#: OpenSSL's text for an alert the broker sent: "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert
#: unknown ca" (OpenSSL 3.0), "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] ssl/tls alert certificate
#: expired" (OpenSSL 3.5, Debian 13).
_ALERT = re.compile(r"\[SSL: [A-Z0-9_]*ALERT[A-Z0-9_]*\] ([a-z0-9 /]+)")


#: The broker closed the TLS connection without an alert the client read: some
#: OpenSSL and gevent versions see a refused client certificate only so.
_EOF = re.compile(r"SSLEOFError|EOF occurred in violation of protocol")


def _closed(settings):
    cert = settings.tls_cert_file
    return ("the broker closed the TLS connection as it began (EOF in violation of the protocol): "
            + (f"did it refuse the client certificate? (tls_cert_file {cert})" if cert else
               "does it require a client certificate? (no tls_cert_file)"))


def _refused(alert, settings):
    cert = settings.tls_cert_file
    return (f"the broker refused the TLS connection: {alert.strip()} "
            f"({f'tls_cert_file {cert}' if cert else 'no tls_cert_file'})")


def _find_ssl_error(exc, depth=0):
    """The ssl.SSLError inside a pika exception: pika wraps it in args, causes or lists."""
    if depth > 6 or exc is None:
        return None
    if isinstance(exc, ssl.SSLError):
        return exc
    inner = [exc.__cause__, exc.__context__] if isinstance(exc, BaseException) else []
    if isinstance(exc, (list, tuple)):
        inner = list(exc)
    elif isinstance(exc, BaseException):
        inner += [getattr(exc, "exception", None)] + list(exc.args) \
            + list(getattr(exc, "exceptions", None) or [])
    for item in inner:
        if isinstance(item, (BaseException, list, tuple)):
            found = _find_ssl_error(item, depth + 1)
            if found is not None:
                return found
    return None
