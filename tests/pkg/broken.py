"""A module that fails to import inside the actor."""
raise ImportError("broken module: this import fails on purpose")
