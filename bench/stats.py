"""Medians, percentiles and spreads, without numpy."""


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summary(values):
    """{median, min, max, n} of the repetitions' values."""
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}
