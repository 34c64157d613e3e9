"""Shipped search spaces: one YAML file per space (package data)."""
