"""Provider-side event streams for tests that script what the stand-in
provider sends (its raw answers)."""

from __future__ import annotations

import json


def chat_chunk(content: str, finish: str | None = None) -> str:
    """One event of an OpenAI chat completion stream, as the provider sends it."""
    event = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
    return f"data: {json.dumps(event)}\n\n"
