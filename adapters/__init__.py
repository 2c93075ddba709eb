"""OpenAI image APIs to provider APIs: pure, table-driven adapters, one module per type."""
from imagegate.adapters import ark, gemini, local, openai, openrouter, zai
from imagegate.adapters.base import Adapter

ADAPTERS: dict[str, Adapter] = {
    m.ADAPTER.type: m.ADAPTER for m in (openai, ark, zai, openrouter, gemini, local)
}

__all__ = ["ADAPTERS", "Adapter"]
