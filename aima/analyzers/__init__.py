"""Built-in analyzers. Each module is a plugin listed in `aima.plugins.DEFAULT_PLUGINS`."""
