"""The aiohttp app: CLI, app factory, endpoints, jobs, dispatch (fallback loop, passthrough and
adapted paths), routing, upstream client, storage. May import middlewares, adapters, config."""
