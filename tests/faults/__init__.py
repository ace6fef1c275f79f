"""Fault injection: kills, full disks, damaged and hostile files, concurrency, NaNs, malformed input."""
