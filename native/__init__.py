"""The in-container limiter and its shared accounting region (issue 3): not built yet."""
