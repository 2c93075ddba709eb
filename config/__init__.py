"""Declared vocabulary: config schema and loader, OpenAI wire Structs, the error type."""
