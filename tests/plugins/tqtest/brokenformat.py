"""A format whose module fails at import, as one with a missing dependency would."""
import tqtest_no_such_dependency  # noqa: F401


def read(body):
    return "recorder", body
