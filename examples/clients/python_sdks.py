"""The openai and anthropic SDKs, unchanged, through the Warden gateway.

    TOKEN=$(target/local/warden token --sub alice --group engineering)
    WARDEN_TOKEN=$TOKEN .venv/bin/python examples/clients/python_sdks.py

The SDKs' "API key" is the caller's own identity token; the gateway verifies
it, removes it, and adds the provider's key itself.
"""

import os

import anthropic
import openai

GATEWAY = os.environ.get("WARDEN_GATEWAY", "http://127.0.0.1:10000")
TOKEN = os.environ["WARDEN_TOKEN"]

gpt = openai.OpenAI(base_url=f"{GATEWAY}/openai/v1", api_key=TOKEN)
print(gpt.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello through the gateway"}],
).choices[0].message.content)

claude = anthropic.Anthropic(base_url=f"{GATEWAY}/anthropic", api_key=TOKEN)
with claude.messages.stream(
    model="claude-sonnet-4-6", max_tokens=256,
    messages=[{"role": "user", "content": "Stream hello through the gateway"}],
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()
