"""progress: the bar's text, and drawing it only on a terminal, at most 10 times a second."""
import io

from taskqueue.cli.progress import Progress, format_duration, render


def test_render_shows_count_percent_rate_and_eta():
    text = render(250, 1000, 0.5, width=80)
    assert "250/1000" in text and " 25%" in text and "500/s" in text and "ETA 2s" in text
    assert text.startswith("[##########..............................]")
    assert render(1000, 1000, 2.0).endswith("500/s done")
    assert render(0, 10, 0.0).endswith("ETA ?")


def test_render_fits_a_narrow_terminal():
    assert len(render(5, 10, 1.0, width=20)) <= 19
    assert "[" not in render(5, 10, 1.0, width=30)   # no room for a useful bar


def test_format_duration_is_short():
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 3600 * 2 + 7 * 60, 86400 * 3 + 3600)] \
        == ["0s", "59s", "1m01s", "59m59s", "2h07m", "3d01h"]


def test_a_duration_is_cut_to_its_last_unit_not_rounded_up():
    assert [format_duration(s) for s in (59.9, 3599.9)] == ["59s", "59m59s"]


class FakeTerminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_redraws_at_most_every_tenth_of_a_second_and_ends_the_line():
    now = [0.0]
    terminal = FakeTerminal(tty=True)
    progress = Progress(100, terminal, clock=lambda: now[0])
    for done in range(50):
        now[0] += 0.01
        progress.update(done)
    assert terminal.getvalue().count("\r") == 5
    progress.finish(100)
    assert terminal.getvalue().endswith("100/100 100% 200/s done\x1b[K\n")


def test_progress_draws_nothing_when_not_on_a_terminal():
    pipe = FakeTerminal(tty=False)
    progress = Progress(10, pipe)
    progress.update(5)
    progress.finish(10)
    assert pipe.getvalue() == ""
