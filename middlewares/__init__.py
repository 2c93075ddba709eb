"""The aiohttp middleware chain, one module per middleware, plus the request keys and the
multipart reader the parse middleware uses. May import config only."""
