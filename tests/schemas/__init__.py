"""OpenAI's JSON Schemas for images answers, vendored, and the schema-checking SDK client."""
from tests.schemas.validate import check, check_body, check_event, checked_sdk, problems

__all__ = ["check", "check_body", "check_event", "checked_sdk", "problems"]
