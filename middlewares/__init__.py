"""The aiohttp middleware chain, one module per middleware."""
