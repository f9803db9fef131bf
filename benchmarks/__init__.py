"""Speed and accuracy benchmarks (each prints its figures; none is a timed test)."""
