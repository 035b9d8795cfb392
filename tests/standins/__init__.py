"""Local stand-ins for the tests, ``make demo`` and the bench (dev-only: not in the wheel)."""
