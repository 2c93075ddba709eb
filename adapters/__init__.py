"""OpenAI image APIs to provider APIs: pure, table-driven adapters, one module per type."""
from adapters import local, openai
from adapters.base import Adapter

ADAPTERS: dict[str, Adapter] = {m.ADAPTER.type: m.ADAPTER for m in (openai, local)}

__all__ = ["ADAPTERS", "Adapter"]
