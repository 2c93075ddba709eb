"""The aiohttp app: CLI, app factory, endpoints, routing, upstream client."""
