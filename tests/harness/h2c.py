"""A real HTTP/2 client (the `h2` protocol library) over cleartext with prior
knowledge, for what HTTP/1.1 clients cannot send: request trailers, a stream
that ends with a trailers frame, and a stream the client resets.

    resp = h2c_request(port, "POST", "/openai/v1/chat/completions",
                       headers={...}, body=b"...", trailers={"x-checksum": "1"})
    resp.status, resp.headers, resp.body, resp.trailers, resp.reset
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class H2Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    reset: bool = False


def _decode(pairs) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in pairs}


def h2c_request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
                body: bytes = b"", trailers: dict[str, str] | None = None, chunk: int = 16384,
                reset_after_body: bool = False, end_with_empty_data: bool = False,
                timeout: float = 15.0) -> H2Response:
    """One request on a new HTTP/2 connection to 127.0.0.1:port. With
    `trailers`, the stream ends with a trailers frame (the data frames do not
    carry END_STREAM); with `reset_after_body`, the client resets the stream
    instead of ending it and the function returns once the reset is sent;
    with `end_with_empty_data`, a bodyless request ends with an empty data
    frame rather than on its headers (as some clients send a GET)."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        stream = conn.get_next_available_stream_id()
        request_headers = [(":method", method), (":path", path), (":scheme", "http"),
                           (":authority", f"127.0.0.1:{port}")]
        request_headers += [(k.lower(), v) for k, v in (headers or {}).items()]
        ends_with_headers = not body and not trailers and not reset_after_body and not end_with_empty_data
        conn.send_headers(stream, request_headers, end_stream=ends_with_headers)
        sock.sendall(conn.data_to_send())
        resp = H2Response()
        pending = memoryview(body)
        done = False

        def pump(events) -> None:
            nonlocal done
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    got = _decode(event.headers)
                    resp.status = int(got.pop(":status"))
                    resp.headers = got
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
                    resp.trailers = _decode(event.headers)
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    resp.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    done = True
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    resp.reset = True
                    done = True

        def receive() -> None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the gateway closed the connection")
            pump(conn.receive_data(data))
            sock.sendall(conn.data_to_send())

        # The body, as flow control allows; the gateway may answer before it
        # has all of it (a refusal), which ends the exchange.
        while len(pending) and not done:
            window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size, chunk)
            if window <= 0:
                receive()
                continue
            piece, pending = pending[:window], pending[window:]
            conn.send_data(stream, bytes(piece), end_stream=(not pending and not trailers and not reset_after_body))
            sock.sendall(conn.data_to_send())
        if not done:
            if reset_after_body:
                conn.reset_stream(stream)
                sock.sendall(conn.data_to_send())
                resp.reset = True
                return resp
            if trailers:
                conn.send_headers(stream, [(k.lower(), v) for k, v in trailers.items()], end_stream=True)
                sock.sendall(conn.data_to_send())
            elif body == b"" and not ends_with_headers:
                conn.send_data(stream, b"", end_stream=True)
                sock.sendall(conn.data_to_send())
        while not done:
            receive()
        return resp
    finally:
        try:
            conn.close_connection()
            sock.sendall(conn.data_to_send())
        except Exception:  # noqa: BLE001 - closing a connection the gateway may have closed
            pass
        sock.close()
