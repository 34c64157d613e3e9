"""Tests of tuner; run with `python -m pytest` from the project root."""
