"""OpenAI image APIs to provider APIs: pure, table-driven adapters."""
