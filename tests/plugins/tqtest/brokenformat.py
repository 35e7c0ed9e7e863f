"""A format whose module fails at import, as one with a missing dependency would,
when $TQTEST_BROKEN_FORMAT is set: the test about it sets it, and every other
test's dispatcher loads it quietly (formats cannot be switched off in a config)."""
import os

if os.environ.get("TQTEST_BROKEN_FORMAT"):
    import tqtest_no_such_dependency  # noqa: F401


def read(body):
    return "recorder", body
