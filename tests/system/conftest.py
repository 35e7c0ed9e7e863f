from support import report_figures
from systemd_figures import FIGURES


def pytest_terminal_summary(terminalreporter):
    report_figures(terminalreporter, "systemd boot figures (tests/system/test_systemd_boot.py)",
                   FIGURES)
