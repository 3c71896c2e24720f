"""Built-in connectors. Each is registered in pyproject.toml under the `collector.connectors`
entry-point group, exactly like a third-party plugin; the engine never imports this package."""
