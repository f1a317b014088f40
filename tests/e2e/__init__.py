"""Tests (a package, so `tests.helpers` imports from anywhere pytest runs)."""
