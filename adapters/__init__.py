"""OpenAI image APIs to provider APIs: pure, table-driven adapters, one module per type."""
from adapters import ark, local, openai, zai
from adapters.base import Adapter

ADAPTERS: dict[str, Adapter] = {m.ADAPTER.type: m.ADAPTER for m in (openai, ark, zai, local)}

__all__ = ["ADAPTERS", "Adapter"]
