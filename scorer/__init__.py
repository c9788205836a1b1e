"""The scheduler extender and the placement engine (`scorer.placement`)."""
