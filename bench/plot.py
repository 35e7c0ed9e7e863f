"""The scale rows' curves, as SVG files: python3 bench/plot.py RESULTS.json DIR

A scale figure is named "<measurement> [<variant>] <x> <what>", e.g.
"backlog classic 100000 drain", "body one-hop classic 1024 MB/s" or
"types 200 status (s)": CURVES below says which measurements are curves, which
words before x name a variant, what x is. Each (measurement, what) becomes one
SVG (or several whats share one, as CURVES says): x = the scale, y = the
figure, one series per variant, a point per median with the repetitions'
min-max as an error bar. Figures of other shapes are left out. Standard
library only (the project has no plotting dependency): the SVG is hand-written.
"""
import hashlib
import json
import math
import os
import re
import sys
from typing import NamedTuple
from xml.sax.saxutils import escape


class Curve(NamedTuple):
    """What the figure names of one scale measurement look like."""
    measurement: str     #: the figure name's first word(s)
    variants: str        #: regex the words between measurement and x must match ("": none)
    x_kind: str          #: "count" (10000, 10_000, 10k, 1M) or "size" (1KB, 64KB, 1MB: bytes)
    x_label: str         #: the x axis, with its unit
    units: tuple = ()    #: (regex on the what, unit) for whats without a "(unit)" of their own
    #: (regex searched in the what, title or None): the whats it matches share one SVG,
    #: titled so (None: the what without its group `series`), a series per variant and
    #: per group `series` of the match
    panels: tuple = ()
    plain: float = 1     #: what a bare number x stands for (body sizes are in KB: 1024)


#: Adjust here when a measurement's names change; the first matching regex wins.
CURVES = (
    Curve("types", "", "count", "worker types (1 process each)",
          units=((r"cpu", "%"), (r"pss|rss", "MB"), (r"rate", "tasks/s"), (r"", "s")),
          panels=((r".*\b(?P<series>(first|existing)( events off)?)\b", None),)),
    Curve("backlog", "classic|quorum", "count", "tasks waiting at the start",
          units=((r"rss|memory", "MB"), (r"preload", "msgs/s"), (r"drain|rate", "tasks/s")),
          panels=((r"^rss growth (?P<series>.+)$", "rss growth"),)),
    Curve("body", r"(bare|one-hop|taskqueue|dispatcher)( (classic|quorum))?|classic|quorum",
          "size", "workitem size", units=((r"", "MB/s"),), panels=((r"^MB/s$", "throughput"),),
          plain=1024),
    Curve("ratio body", "classic|quorum", "size", "workitem size", units=((r"", "x"),),
          plain=1024),
    Curve("submit", "threads", "count", "threads calling Client.submit (one Client)",
          units=((r"", "tasks/s"),)),
    Curve("cluster", "one-hop|dispatcher", "count", "RabbitMQ nodes",
          units=((r"", "tasks/s"),)),
)

SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
              "mib": 1024 ** 2, "g": 1024 ** 3, "gb": 1024 ** 3, "gib": 1024 ** 3}
COUNT_UNITS = {"k": 1000, "m": 1000 ** 2}
_NUMBER = re.compile(r"(\d+(?:[.,_]\d+)*)([a-z]*)")


def parse_x(word, curve):
    """The number a figure name's x word stands for; None if it is no x of `curve`."""
    match = _NUMBER.fullmatch(word.lower())
    units = {"": curve.plain, **(SIZE_UNITS if curve.x_kind == "size" else COUNT_UNITS)}
    if not match or match.group(2) not in units:
        return None
    digits = match.group(1).replace("_", "").replace(",", "")
    return float(digits) * units[match.group(2)]


def parse_name(name, curves=CURVES):
    """(curve, variant, x, what) of a scale figure's name, or None for any other figure.
    x is the first word after the measurement that is a number; the words before it
    are the variant."""
    words = name.split()
    for curve in curves:
        head = curve.measurement.split()
        if words[:len(head)] != head:
            continue
        rest = words[len(head):]
        at = next((i for i, word in enumerate(rest) if parse_x(word, curve) is not None), None)
        if at is None:
            continue
        variant = " ".join(rest[:at])
        if re.fullmatch(curve.variants, variant):
            return curve, variant, parse_x(rest[at], curve), " ".join(rest[at + 1:])
    return None


class Panel(NamedTuple):
    """One SVG: its measurement, title, y unit and {(variant, part): [(x, median, min, max)]}
    (part: the `series` group of a shared panel's what, else "")."""
    curve: Curve
    title: str
    unit: str
    series: dict


def split_unit(what, curve):
    """(what without a trailing "(unit)", the unit: that one, else the curve's table)."""
    match = re.fullmatch(r"(.*?)\s*\(([^()]*)\)", what)
    if match:
        return match.group(1), match.group(2)
    for pattern, unit in curve.units:
        if re.search(pattern, what, re.IGNORECASE):
            return what, unit
    return what, ""


def point(name, figures, raw):
    """(median, min, max) of a figure: from the summary, else from every repetition's value."""
    s = figures.get(name)
    s = s if isinstance(s, dict) else {}
    if all(k in s for k in ("median", "min", "max")):
        values = (s["median"], s["min"], s["max"])
    else:
        reps = raw.get(name)
        if not isinstance(reps, list) or not reps:
            return None
        try:
            reps = sorted(float(v) for v in reps)
        except (TypeError, ValueError):
            return None
        mid = len(reps) // 2
        median = reps[mid] if len(reps) % 2 else (reps[mid - 1] + reps[mid]) / 2
        values = (median, reps[0], reps[-1])
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


def group(figures, raw=None, curves=CURVES):
    """{file stem: Panel} of every scale figure in `figures` ({name: {median, min, max}})."""
    raw = raw or {}
    panels = {}
    for name in sorted(set(figures) | set(raw)):
        parsed = parse_name(name, curves)
        values = parsed and point(name, figures, raw)
        if not values:
            continue
        curve, variant, x, what = parsed
        what, unit = split_unit(what, curve)
        title, part = panel_of(what, curve)
        stem = slug(f"{curve.measurement} {title} {unit}")
        panel = panels.setdefault(stem, Panel(curve, f"{curve.measurement}: {title}".rstrip(": "),
                                              unit, {}))
        panel.series.setdefault((variant, part), []).append((x, *values))
    for panel in panels.values():
        for points in panel.series.values():
            points.sort()
    return panels


def panel_of(what, curve):
    """(panel title, series part) of a what: by the first of curve.panels it matches."""
    for pattern, title in curve.panels:
        match = re.search(pattern, what)
        if match:
            if "series" not in match.groupdict():
                return title or what, ""
            start, end = match.span("series")
            rest = re.sub(r"\s+", " ", what[:start] + what[end:]).replace(" ,", ",").strip()
            return title or rest, match.group("series")
    return what, ""


def slug(text):
    """A file name of letters, digits and dashes: a figure name may hold '/', spaces, '..'.
    A long one is cut, with a hash of the whole so that two cut alike stay apart."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"
    if len(name) > 80:
        name = f"{name[:71]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


class Scale:
    """Maps values in [lo, hi] onto pixels [p0, p1], linearly or logarithmically."""

    def __init__(self, lo, hi, p0, p1, log=False):
        self.lo, self.hi, self.p0, self.p1, self.log = lo, hi, p0, p1, log

    def __call__(self, value):
        f = (lambda v: math.log10(v)) if self.log else (lambda v: v)
        lo, hi = f(self.lo), f(self.hi)
        if hi == lo:
            return (self.p0 + self.p1) / 2
        return self.p0 + (f(value) - lo) / (hi - lo) * (self.p1 - self.p0)


def wants_log(values):
    """Log when the values are positive and span a decade or more (10 .. 200 types)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def x_scale(xs, p0, p1):
    """The x axis: the data's range, padded so that no point sits on an edge."""
    log = wants_log(xs)
    lo, hi = min(xs), max(xs)
    if lo == hi:
        lo, hi = (lo / 2, hi * 2) if log or lo > 0 else (lo - 1, hi + 1)
    pad = (hi / lo) ** 0.08 if log else (hi - lo) * 0.08
    return Scale(lo / pad, hi * pad, p0, p1, log) if log else Scale(lo - pad, hi + pad, p0, p1)


def nice_ticks(lo, hi, count=5):
    """Round ticks (1, 2, 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1)
    raw_step = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw_step))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw_step)
    first = math.floor(lo / step)
    last = math.ceil(hi / step)
    return [round(n * step, 12) for n in range(first, last + 1)]


def log_ticks(lo, hi):
    """Powers of ten covering [lo, hi] (both > 0)."""
    return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def y_scale(lows, highs, p0, p1):
    """(scale, ticks): from 0 (or the decade below, on a log axis) to a round top."""
    lo, hi = min(lows), max(highs)
    if lo > 0 and hi / lo >= 100:   # a decade or two would squeeze the small ones flat
        ticks = log_ticks(lo, hi)
        return Scale(ticks[0], ticks[-1], p0, p1, log=True), ticks
    ticks = nice_ticks(min(lo, 0), max(hi, 0))
    return Scale(ticks[0], ticks[-1], p0, p1), ticks


def number(value):
    """Short tick text: 0.25, 12, 1500, 12k, 1M."""
    for threshold, factor, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / factor:g}{suffix}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def size(value):
    """Tick text of a byte size: 512 B, 1 KB, 64 KB, 8 MB."""
    for factor, suffix in ((1024 ** 3, "GB"), (1024 ** 2, "MB"), (1024, "KB")):
        if value >= factor:
            return f"{value / factor:g} {suffix}"
    return f"{value:g} B"


COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
          "#7f7f7f", "#bcbd22", "#e377c2")
DASHES = ("", ' stroke-dasharray="6 3"', ' stroke-dasharray="2 2"', ' stroke-dasharray="8 3 2 3"')
WIDTH, HEIGHT = 680, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 170, 44, 64


def render(panel):
    """The panel as a standalone SVG document (text)."""
    points = [p for pts in panel.series.values() for p in pts]
    xs = sorted({p[0] for p in points})
    sx = x_scale(xs, LEFT, WIDTH - RIGHT)
    sy, yticks = y_scale([p[2] for p in points], [p[3] for p in points], HEIGHT - BOTTOM, TOP)
    x_text = size if panel.curve.x_kind == "size" else number
    styles = series_styles(panel.series)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           _text(WIDTH / 2, 24, panel.title, 'text-anchor="middle" font-size="15"')]
    left, right, top, bottom = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    for tick in yticks:   # horizontal grid lines, labelled on the left
        y = sy(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(_text(left - 6, y + 4, number(tick), 'text-anchor="end"'))
    for x in xs:   # a tick at each measured x: there are only a few
        px = sx(x)
        out.append(f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 5}" '
                   f'stroke="black"/>')
        out.append(_text(px, bottom + 18, x_text(x), 'text-anchor="middle"'))
    out.append(f'<polyline points="{left},{top} {left},{bottom} {right},{bottom}" fill="none" '
               f'stroke="black"/>')
    log_note = " (log scale)" if sx.log else ""
    out.append(_text((left + right) / 2, HEIGHT - 18, panel.curve.x_label + log_note,
                     'text-anchor="middle"'))
    y_label = f"{panel.unit}{' (log scale)' if sy.log else ''}" or "value"
    out.append(_text(18, (top + bottom) / 2, y_label,
                     f'text-anchor="middle" transform="rotate(-90 18 {(top + bottom) / 2:.1f})"'))
    for n, ((variant, part), pts) in enumerate(sorted(panel.series.items())):
        color, dash = styles[variant, part]
        label = label_of(variant, part, panel.curve)
        out.extend(_series(label, pts, color, dash, sx, sy, x_text, panel.unit))
        y = TOP + 10 + 20 * n
        out.append(f'<line x1="{right + 12}" y1="{y - 3}" x2="{right + 32}" y2="{y - 3}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>')
        out.append(_text(right + 38, y + 1, label))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def label_of(variant, part, curve):
    return " ".join(w for w in (variant, part) if w) or curve.measurement


def series_styles(series):
    """{(variant, part): (color, dash attribute)}: a color per part and a dash per
    variant when a panel has parts (rss growth of each process, classic and quorum),
    else a color per variant, all solid."""
    variants = sorted({v for v, _ in series})
    parts = sorted({p for _, p in series})
    out = {}
    for variant, part in series:
        if len(parts) > 1:
            color = COLORS[parts.index(part) % len(COLORS)]
            dash = DASHES[variants.index(variant) % len(DASHES)]
        else:
            color, dash = COLORS[variants.index(variant) % len(COLORS)], ""
        out[variant, part] = color, dash
    return out


def _series(label, pts, color, dash, sx, sy, x_text, unit):
    line = " ".join(f"{sx(x):.1f},{sy(med):.1f}" for x, med, _, _ in pts)
    out = [f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>']
    for x, med, low, high in pts:
        px, top, bottom = sx(x), sy(high), sy(low)
        out.append(f'<g stroke="{color}"><line x1="{px:.1f}" y1="{top:.1f}" x2="{px:.1f}" '
                   f'y2="{bottom:.1f}"/><line x1="{px - 4:.1f}" y1="{top:.1f}" x2="{px + 4:.1f}" '
                   f'y2="{top:.1f}"/><line x1="{px - 4:.1f}" y1="{bottom:.1f}" x2="{px + 4:.1f}" '
                   f'y2="{bottom:.1f}"/></g>')
        tip = f"{label}, {x_text(x)}: {med:.4g} {unit} (min {low:.4g}, max {high:.4g})"
        out.append(f'<circle cx="{px:.1f}" cy="{sy(med):.1f}" r="3.5" fill="{color}">'
                   f'<title>{escape(tip)}</title></circle>')
    return out


def _text(x, y, text, attrs=""):
    return f'<text x="{x:.1f}" y="{y:.1f}" {attrs}>{escape(text)}</text>'


def write_plots(results, directory):
    """Write every panel of `results` (bench/main.py's JSON, loaded) into `directory`;
    the paths written, sorted."""
    figures, raw = results.get("figures"), results.get("raw")
    panels = group(figures if isinstance(figures, dict) else {},
                   raw if isinstance(raw, dict) else {})
    os.makedirs(directory, exist_ok=True)
    paths = []
    for stem, panel in sorted(panels.items()):
        path = os.path.join(directory, stem + ".svg")
        with open(path, "w") as f:
            f.write(render(panel))
        paths.append(path)
    return paths


def main(argv):
    if len(argv) != 2:
        print(__doc__.split("\n")[0], file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            results = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"bench/plot.py: cannot read {argv[0]}: {exc}", file=sys.stderr)
        return 1
    if not isinstance(results, dict):
        print(f"bench/plot.py: {argv[0]} is no bench/main.py output (no JSON object)",
              file=sys.stderr)
        return 1
    for path in write_plots(results, argv[1]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
