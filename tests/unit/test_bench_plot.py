"""bench/plot.py: which figures form which curve, the axes, and SVG that parses.

bench/ is no package and holds modules named like stdlib and test modules
(profile.py, report.py, common.py): putting it on sys.path would shadow them,
so plot.py (standard library only) is loaded from its file under a name of its own.
"""
import importlib.util
import json
import math
import pathlib
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.timeout(10)

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "plot.py"
_spec = importlib.util.spec_from_file_location("bench_plot", _PATH)
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)

SVG = "{http://www.w3.org/2000/svg}"


def labelled(panel):
    """{series label: points} of a panel, as its legend names them."""
    return {plot.label_of(v, p, panel.curve): pts for (v, p), pts in panel.series.items()}


def fig(median, low=None, high=None):
    return {"median": median, "min": median if low is None else low,
            "max": median if high is None else high, "n": 3}


def test_a_backlog_figure_parses_into_its_variant_x_and_what():
    curve, variant, x, what = plot.parse_name("backlog quorum 1000000 drain")
    assert (curve.measurement, variant, x, what) == ("backlog", "quorum", 1e6, "drain")


def test_types_have_no_variant_and_keep_their_unit_in_the_what():
    curve, variant, x, what = plot.parse_name("types 200 all consuming existing (s)")
    assert (curve.measurement, variant, x, what) == ("types", "", 200, "all consuming existing (s)")


def test_words_before_x_are_the_variant():
    curve, variant, x, what = plot.parse_name("body one-hop classic 1024 MB/s")
    assert (curve.measurement, variant, x, what) == ("body", "one-hop classic", 1024 ** 2, "MB/s")


@pytest.mark.parametrize("word, expected", [
    ("1", 1024), ("64", 65536), ("1024", 1024 ** 2), ("8192", 8 * 1024 ** 2),   # bare: KB
    ("1KB", 1024), ("8MB", 8 * 1024 ** 2), ("1kib", 1024), ("1.5MB", 1.5 * 1024 ** 2),
    ("512b", 512)])
def test_body_sizes_are_bytes(word, expected):
    assert plot.parse_name(f"body bare classic {word} MB/s")[2] == expected


@pytest.mark.parametrize("word, expected", [("10000", 1e4), ("10_000", 1e4), ("10,000", 1e4),
                                            ("10k", 1e4), ("1M", 1e6)])
def test_counts_accept_separators_and_suffixes(word, expected):
    assert plot.parse_name(f"backlog classic {word} drain")[2] == expected


@pytest.mark.parametrize("name", [
    "submit client submit_many",          # a single point, no curve
    "ratio submit threads 16 / 1",        # a ratio of two points
    "ratio backlog classic drain 1000000 / 10000",
    "cpu/task body one-hop classic 1024: broker",
    "e2e taskqueue one-hop classic",      # no scale measurement
    "backlog sqlite 10000 drain",         # an unknown variant
    "backlog 10000 drain",                # a variant missing
    "types classic 10 status (s)",        # a variant where there is none
    "backlog classic lots drain",         # x is no number
    "body classic 1XB taskqueue",         # a size unit that does not exist
    "types", "", "backlog classic"])
def test_other_figures_are_no_curve(name):
    assert plot.parse_name(name) is None


def test_series_group_by_variant_sorted_by_x_one_panel_per_what():
    figures = {"backlog classic 1000000 drain": fig(4800, 4500, 5000),
               "backlog classic 10000 drain": fig(5200, 4900, 5600),
               "backlog quorum 10000 drain": fig(3600),
               "backlog classic 10000 preload": fig(20000),
               "e2e taskqueue": fig(7000)}
    panels = plot.group(figures)
    assert set(panels) == {"backlog-drain-tasks-s", "backlog-preload-msgs-s"}
    drain = panels["backlog-drain-tasks-s"]
    assert (drain.title, drain.unit) == ("backlog: drain", "tasks/s")
    assert labelled(drain) == {"classic": [(1e4, 5200, 4900, 5600), (1e6, 4800, 4500, 5000)],
                            "quorum": [(1e4, 3600, 3600, 3600)]}


def test_the_rss_growth_of_every_process_shares_one_panel():
    panels = plot.group({"backlog classic 10000 rss growth worker": fig(1.5),
                         "backlog classic 10000 rss growth supervisor": fig(0.2),
                         "backlog quorum 10000 rss growth worker": fig(1.1),
                         "backlog quorum 10000 broker rss held": fig(300)})
    growth = panels["backlog-rss-growth-mb"]
    assert growth.title == "backlog: rss growth"
    assert set(labelled(growth)) == {"classic worker", "classic supervisor", "quorum worker"}
    assert panels["backlog-broker-rss-held-mb"].unit == "MB"


def test_a_unit_in_the_name_wins_over_the_table_and_leaves_the_title():
    panels = plot.group({"types 10 supervisor idle cpu (%)": fig(0.1),
                         "types 10 status (s)": fig(0.2),
                         "types 10 load rate (tasks/s)": fig(900)})
    assert {(p.title, p.unit) for p in panels.values()} == {
        ("types: supervisor idle cpu", "%"), ("types: status", "s"),
        ("types: load rate", "tasks/s")}


def test_first_and_existing_starts_are_two_series_of_one_panel():
    panels = plot.group({"types 10 all consuming first (s)": fig(3),
                         "types 10 all consuming existing (s)": fig(1),
                         "types 10 all consuming first, broker (s)": fig(3.1),
                         "types 10 all consuming existing, broker (s)": fig(1.1),
                         "types 10 first consuming existing (s)": fig(0.5),
                         "types 10 all consuming existing events off (s)": fig(0.9)})
    assert {p.title: set(labelled(p)) for p in panels.values()} == {
        "types: all consuming": {"first", "existing", "existing events off"},
        "types: all consuming, broker": {"first", "existing"},
        "types: first consuming": {"existing"}}


def test_body_throughputs_share_one_panel_and_the_ratio_is_its_own_curve():
    panels = plot.group({"body one-hop classic 1024 MB/s": fig(300),
                         "body bare classic 1024 MB/s": fig(350),
                         "body one-hop classic 64 MB/s": fig(120),
                         "ratio body classic 1024 one-hop / bare": fig(0.86)})
    throughput = panels["body-throughput-mb-s"]
    assert (throughput.title, throughput.unit) == ("body: throughput", "MB/s")
    assert labelled(throughput) == {"one-hop classic": [(65536, 120, 120, 120),
                                                     (1024 ** 2, 300, 300, 300)],
                                 "bare classic": [(1024 ** 2, 350, 350, 350)]}
    ratio = panels["ratio-body-one-hop-bare-x"]
    assert (ratio.title, ratio.unit, list(ratio.series)) == (
        "ratio body: one-hop / bare", "x", [("classic", "")])


def test_the_spread_comes_from_raw_when_the_summary_lacks_it():
    panels = plot.group({}, {"submit threads 4": [3000, 2500, 3300]})
    assert labelled(panels["submit-tasks-s"]) == {"threads": [(4, 3000, 2500, 3300)]}


@pytest.mark.parametrize("bad", [{"median": float("nan"), "min": 1, "max": 2},
                                 {"median": "fast", "min": 1, "max": 2}, "fast", None])
def test_figures_that_are_no_numbers_are_left_out(bad):
    assert plot.group({"submit threads 4": bad}, {"submit threads 4": ["x"]}) == {}


def test_x_is_logarithmic_when_it_spans_decades_and_linear_otherwise():
    assert plot.x_scale([10, 50, 200], 0, 100).log
    assert plot.x_scale([1024, 8 * 1024 ** 2], 0, 100).log
    assert not plot.x_scale([1, 3], 0, 100).log
    assert not plot.x_scale([0, 100], 0, 100).log    # zero has no logarithm


@pytest.mark.parametrize("xs", [[10, 50, 200], [1, 3], [5], [0]])
def test_x_points_keep_their_order_and_stay_inside_the_axis(xs):
    scale = plot.x_scale(xs, 80, 500)
    pixels = [scale(x) for x in xs]
    assert pixels == sorted(pixels)
    assert all(80 < p < 500 for p in pixels)


def test_linear_y_starts_at_zero_with_round_ticks_above_every_max():
    scale, ticks = plot.y_scale([4500, 3300], [5600, 3900], 300, 40)
    assert ticks[0] == 0 and ticks[-1] >= 5600
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1 and steps.pop() in (500, 1000, 2000)
    assert (scale(0), scale(ticks[-1])) == (300, 40)


def test_y_is_logarithmic_over_two_decades_with_decade_ticks():
    scale, ticks = plot.y_scale([2, 250], [3, 330], 300, 40)
    assert scale.log and ticks == [1, 10, 100, 1000]
    assert math.isclose(scale(10), 300 - (300 - 40) / 3)


@pytest.mark.parametrize("lo, hi", [(0, 0), (0.001, 0.004), (0, 7e6), (-3, 2)])
def test_nice_ticks_cover_the_range(lo, hi):
    ticks = plot.nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 12


@pytest.mark.parametrize("value, text", [(10000, "10k"), (1e6, "1M"), (2500, "2500"),
                                         (0.25, "0.25"), (0, "0")])
def test_tick_numbers_are_short(value, text):
    assert plot.number(value) == text


def test_sizes_read_as_sizes():
    assert [plot.size(v) for v in (512, 1024, 65536, 8 * 1024 ** 2)] == [
        "512 B", "1 KB", "64 KB", "8 MB"]


def test_the_svg_parses_and_draws_each_point_with_its_error_bar_and_labels():
    panels = plot.group({"backlog classic 10000 drain": fig(5200, 4900, 5600),
                         "backlog classic 100000 drain": fig(5100, 4700, 5400),
                         "backlog quorum 10000 drain": fig(3600, 3300, 3900)})
    root = ET.fromstring(plot.render(panels["backlog-drain-tasks-s"]))
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f"{SVG}circle")) == 3
    assert len(root.findall(f"{SVG}g")) == 3          # one error bar (3 lines) per point
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "backlog: drain" in texts and "tasks/s" in texts
    assert "tasks waiting at the start (log scale)" in texts
    assert {"10k", "100k", "classic", "quorum"} <= set(texts)


def test_hostile_figure_names_are_escaped_and_give_safe_file_names(tmp_path):
    results = {"figures": {"types 10 <script>&\"x\"/../../etc (s)": fig(1),
                           "types 50 <script>&\"x\"/../../etc (s)": fig(2)}}
    paths = plot.write_plots(results, str(tmp_path / "plots"))
    assert [pathlib.Path(p).parent for p in paths] == [tmp_path / "plots"]
    root = ET.parse(paths[0]).getroot()
    assert "types: <script>&\"x\"/../../etc" in [t.text for t in root.iter(f"{SVG}text")]


def test_main_writes_one_svg_per_panel_and_refuses_what_is_no_results_file(tmp_path, capsys):
    good = tmp_path / "results.json"
    good.write_text(json.dumps({"figures": {"submit threads 1": fig(900),
                                            "submit threads 16": fig(5000)}}))
    assert plot.main([str(good), str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["submit-tasks-s.svg"]
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert plot.main([str(bad), str(tmp_path / "out")]) == 1
    assert "no bench/main.py output" in capsys.readouterr().err


def test_y_stays_linear_under_two_decades():
    assert not plot.y_scale([3.5, 250], [4.2, 330], 300, 40)[0].log


def test_long_names_are_cut_but_stay_apart():
    a, b = plot.slug("x" * 200 + " a"), plot.slug("x" * 200 + " b")
    assert a != b and len(a) == len(b) == 80


def test_a_shared_panel_tells_parts_by_color_and_variants_by_dash():
    styles = plot.series_styles({("classic", "worker"): [], ("quorum", "worker"): [],
                                 ("classic", "broker"): []})
    assert styles["classic", "worker"][0] == styles["quorum", "worker"][0]
    assert styles["classic", "worker"][1] != styles["quorum", "worker"][1]
    assert styles["classic", "worker"][0] != styles["classic", "broker"][0]
    plain = plot.series_styles({("classic", ""): [], ("quorum", ""): []})
    assert plain["classic", ""][0] != plain["quorum", ""][0] and plain["quorum", ""][1] == ""
