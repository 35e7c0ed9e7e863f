"""Figures test_systemd_boot.py records, printed at the end of the run (conftest.py)."""

#: Debian suite -> {figure: value}.
FIGURES = {}
