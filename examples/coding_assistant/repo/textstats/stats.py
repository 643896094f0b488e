"""Statistics over words."""


def word_lengths(text):
    """Lengths of the whitespace-separated words of `text`."""
    return [len(w) for w in text.split()]


def mean(values):
    """Arithmetic mean; 0.0 for no values."""
    if not values:
        return 0.0
    return sum(values) / len(values)


def median(values):
    """Median of `values` (the mean of the two middle values for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid]
