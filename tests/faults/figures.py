"""Figures the fault tests record, printed at the end of the run (conftest.py)."""

#: Test name -> {figure: value}.
FIGURES = {}
