"""Loaded into every test run of `make mutate` (`-p tests.mutation.pytest_plugin`): Hypothesis
draws the same examples for every mutant and keeps no example database. Otherwise a verdict
depends on chance and on the failing examples an earlier mutant left in the database, and two
runs of the same tree give different scores."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
settings.load_profile("mutation")
