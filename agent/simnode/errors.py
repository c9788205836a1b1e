"""The one error the simulated-node package raises for a bad spec or directory."""

from __future__ import annotations


class SimulationError(ValueError):
    """A simulated-node spec, directory or `nvml.json` that cannot be used.

    The message is one line naming the file and the place in it.
    """
