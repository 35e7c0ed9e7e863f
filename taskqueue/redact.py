"""Hide broker credentials in text meant for people or other programs: log
lines, error messages, `taskqueue status`, dead-letter headers.

Two rules, applied together: the password of any `scheme://user:password@`
URL becomes `***` (the user stays: it says which account was used), and each
password the config loaded (`remember`) is replaced wherever it appears, as
pika or a plugin may quote it in any form.
"""
import re

#: What a hidden password reads as.
MASK = "***"
#: `scheme://user:password@`: the password ends at the `@` (a literal `@` or `/`
#: in a password is percent-encoded in a URL).
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^@/\s]*@")
#: A password shorter than this is not searched for in free text (it would mask
#: ordinary words); URLs still hide it.
MIN_SECRET = 4

_secrets = set()


def remember(secret):
    """From now on, hide `secret` (a broker password) in this process's text."""
    if secret and len(secret) >= MIN_SECRET:
        _secrets.add(secret)


def redact(text, secrets=None):
    """`text` (any object: its str) with URL passwords and the remembered secrets
    (or `secrets`, when given) replaced by `***`."""
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", str(text))
    # Longest first: a secret that contains another is hidden whole.
    for secret in sorted(_secrets if secrets is None else secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text
