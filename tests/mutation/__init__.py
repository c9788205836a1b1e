"""Mutation testing of the modules that guard an invariant (`make mutate`, docs/mutation.md)."""
