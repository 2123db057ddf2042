#!/usr/bin/env python3
"""MCP test server for Warden's gateway tests (official Python SDK, mcp==2.3.0).

    python tests/mcp/server.py --port N [--json-response] [--stateless]

Serves Streamable HTTP at http://127.0.0.1:N/mcp (bound to 127.0.0.1 only).
POST answers are text/event-stream by default, application/json with
--json-response. Stateful (issues Mcp-Session-Id on initialize) unless
--stateless. Each executed tool call is logged to stderr as
`called <tool> <json arguments>`, so a test can prove that a refused call
never reached the server.

Note: a 2.3.0 `Client` in its default mode="auto" first probes
`server/discover` at protocol 2026-07-28; this server answers it, and the
connection then runs in the sessionless per-request era (no initialize, no
Mcp-Session-Id, no GET/DELETE; quick answers come back as application/json
even without --json-response). Use `Client(..., mode="legacy")` for the
initialize handshake with a session (there --json-response decides between
application/json and text/event-stream).

Tool results carry the text twice: `content[0].text` and
`structuredContent.result` (the SDK's default for a `-> str` tool).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

HOST = "127.0.0.1"
PII_LINE = "contact: jane.doe@example.com, card 4111 1111 1111 1111"

mcp = MCPServer("warden-test-server", version="1.0.0")


def _log_call(tool: str, arguments: dict[str, Any]) -> None:
    print(f"called {tool} {json.dumps(arguments, sort_keys=True)}", file=sys.stderr, flush=True)


@mcp.tool()
def read_file(path: str) -> str:
    """Read a file (returns fixed text that includes personal data)."""
    _log_call("read_file", {"path": path})
    return f"file: {path}\n{PII_LINE}\n"


@mcp.tool()
def run_shell(command: str) -> str:
    """Run a shell command (pretends to)."""
    _log_call("run_shell", {"command": command})
    return f"ran: {command}"


@mcp.tool()
def run_sql(query: str) -> str:
    """Run an SQL query (pretends to)."""
    _log_call("run_sql", {"query": query})
    return f"rows: 0 for {query}"


@mcp.tool()
def delete_everything() -> str:
    """Delete everything (pretends to)."""
    _log_call("delete_everything", {})
    return "deleted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with application/json, not SSE")
    parser.add_argument("--stateless", action="store_true", help="no Mcp-Session-Id (default: stateful)")
    args = parser.parse_args()

    # The SDK turns DNS-rebinding protection on by itself when bound to
    # 127.0.0.1, allowing only Host "127.0.0.1:*", "localhost:*", "[::1]:*"
    # (a port is required: a bare "127.0.0.1" gets 421) and matching Origins.
    # We keep the protection on but state the list explicitly and also accept
    # port-less hosts, so a request relayed by a proxy on 127.0.0.1 with
    # Host "127.0.0.1:<proxy port>" (or without a port) is accepted.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"],
        allowed_origins=["http://127.0.0.1", "http://127.0.0.1:*", "http://localhost", "http://localhost:*"],
    )
    app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=args.json_response,
        stateless_http=args.stateless,
        transport_security=security,
        host=HOST,
    )
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
