"""The warm actor pool: settings/key, actor + pipeline + runner, registry, dispatch."""
