"""A small proxy-wasm host (ABI 0.2.1) on wasmtime that stands in for Envoy.

It runs the compiled filter, dist/warden-filter.wasm, the way Envoy 1.40 runs
it, so tests can check the adapter's glue (host calls in, effects out)
without a real Envoy. Where Envoy's behaviour matters, the code follows
Envoy's wasm host (source/extensions/common/wasm/context.cc and
proxy-wasm-cpp-host) and says so in a comment marked "Envoy:".

Layout
- Envoy: one proxy process, and what every VM of one vm_id shares: the fake
  clock (the only time the module ever sees), shared data with CAS, stats by
  name, the known clusters, the plugin and VM configuration, and the
  environment (vm_config.environment_variables, given to WASI's environ).
- Vm: one instance of the module (one Envoy worker). Its imports are defined
  from the module's own import list: WASI preview1 from wasmtime's WasiConfig
  (its clock replaced by the fake one), every proxy_* call implemented here,
  and any other import traps loudly, naming itself. It records log lines,
  the tick period and every proxy_http_call; a test answers a call with
  Vm.respond(call, ...) or Vm.fail(call), and fires the timer with Vm.tick().
- Stream: one HTTP request and its response through the filter, driven as
  Envoy's filter manager drives an HTTP filter (with
  allow_on_headers_stop_iteration: true). It records what went upstream and
  what the client got (local replies included), and the filter state
  (proxy_set_property) the access log reads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parents[2]
MODULE_PATH = ROOT / "dist" / "warden-filter.wasm"
CACHE_DIR = ROOT / "target" / "emulated"

# proxy_status_t
OK, NOT_FOUND, BAD_ARGUMENT, INVALID_MEMORY_ACCESS, CAS_MISMATCH = 0, 1, 2, 6, 8
# proxy_map_type_t
REQUEST_HEADERS, RESPONSE_HEADERS, CALL_RESPONSE_HEADERS, CALL_RESPONSE_TRAILERS = 0, 2, 6, 7
# proxy_buffer_type_t
REQUEST_BODY, RESPONSE_BODY, CALL_RESPONSE_BODY, VM_CONFIGURATION, PLUGIN_CONFIGURATION = 0, 1, 4, 6, 7
# proxy_action_t
CONTINUE, PAUSE = 0, 1
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")
METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM = 0, 1, 2

_ENGINE: wasmtime.Engine | None = None
_MODULE: wasmtime.Module | None = None


def load_module() -> wasmtime.Module:
    """The compiled filter, compiled once (about 6 s) and cached under target/."""
    global _ENGINE, _MODULE
    if _MODULE is None:
        # Created at the first VM, not at import: wasmtime's signal handlers
        # (how a trap is caught) must be installed after pytest's faulthandler,
        # which would otherwise take a trap for a crash of the interpreter.
        _ENGINE = wasmtime.Engine()
        code = MODULE_PATH.read_bytes()
        key = hashlib.sha256(code + importlib.metadata.version("wasmtime").encode()).hexdigest()[:16]
        cached = CACHE_DIR / f"warden-filter-{key}.cwasm"
        try:
            _MODULE = wasmtime.Module.deserialize_file(_ENGINE, str(cached))
        except (OSError, wasmtime.WasmtimeError):
            _MODULE = wasmtime.Module(_ENGINE, code)
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(_MODULE.serialize())
            tmp.replace(cached)
    return _MODULE


class Unimplemented(Exception):
    """The module called an import this host does not implement."""


class Trapped(Exception):
    """The module trapped (a panic aborts it): Envoy would fail the VM."""


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def pack_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """proxy-wasm's map encoding: count, (key size, value size)*, (key NUL value NUL)*."""
    out = bytearray(struct.pack("<I", len(pairs)))
    for k, v in pairs:
        out += struct.pack("<II", len(k), len(v))
    for k, v in pairs:
        out += k + b"\0" + v + b"\0"
    return bytes(out)


def unpack_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data:
        return []
    (n,) = struct.unpack_from("<I", data)
    p, out = 4 + 8 * n, []
    for i in range(n):
        ks, vs = struct.unpack_from("<II", data, 4 + 8 * i)
        out.append((data[p:p + ks], data[p + ks + 1:p + ks + 1 + vs]))
        p += ks + vs + 2
    return out


class Headers:
    """An Envoy header map: lower-case names, byte values, order kept, repeats allowed."""

    def __init__(self, pairs=()):
        self.pairs = [(_b(k).lower(), _b(v)) for k, v in pairs]

    def get(self, name: str) -> bytes | None:
        # Envoy: the first value of a repeated header.
        return next((v for k, v in self.pairs if k == _b(name).lower()), None)

    def remove(self, name: str | bytes) -> None:
        self.pairs = [(k, v) for k, v in self.pairs if k != _b(name).lower()]

    def replace(self, name: str | bytes, value: bytes) -> None:
        # Envoy: setCopy replaces every value of the name with this one.
        self.remove(name)
        self.pairs.append((_b(name).lower(), _b(value)))

    def copy(self) -> Headers:
        return Headers(self.pairs)

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __repr__(self) -> str:
        return f"Headers({self.pairs!r})"


@dataclass
class Message:
    """What went upstream (a request) or reached the client (a response)."""
    headers: Headers | None = None
    body: bytearray = field(default_factory=bytearray)
    end: bool = False

    @property
    def status(self) -> int | None:
        value = self.headers.get(":status") if self.headers else None
        return int(value) if value else None

    def json(self):
        return json.loads(self.body)


@dataclass
class HttpCall:
    """A proxy_http_call, as Envoy's async client would send it."""
    token: int
    context_id: int
    cluster: str
    headers: Headers
    body: bytes
    timeout_ms: int
    answered: bool = False

    @property
    def path(self) -> str:
        return (self.headers.get(":path") or b"").decode()


class Envoy:
    """One proxy: the clock, shared data, stats and configuration its VMs share."""

    def __init__(self, configuration: str | bytes, env: dict[str, str] | None = None,
                 clusters=("provider_openai", "provider_anthropic", "idp", "warden_control_plane"),
                 vm_configuration: bytes = b"", start_time: int = 1_800_000_000):
        self.plugin_configuration = _b(configuration)
        self.vm_configuration = vm_configuration
        self.env = dict(env or {})
        self.clusters = set(clusters)
        self.clock_ns = start_time * 1_000_000_000
        self.shared: dict[bytes, tuple[bytes, int]] = {}
        self._next_cas = 1
        # Test hook: key -> callable run once right after a VM reads that key
        # (another worker writing between this one's read and its write).
        self.after_shared_read: dict[bytes, callable] = {}
        self.stats: dict[str, int | list[int]] = {}
        self.vms: list[Vm] = []

    @property
    def now(self) -> int:
        return self.clock_ns // 1_000_000_000

    def advance(self, seconds: float) -> None:
        self.clock_ns += int(seconds * 1_000_000_000)

    def start_vm(self) -> Vm:
        vm = Vm(self)
        self.vms.append(vm)
        vm.start()
        return vm

    def logs(self) -> list[tuple[str, str]]:
        return [line for vm in self.vms for line in vm.logs]

    def set_shared(self, key: bytes, value: bytes, cas: int) -> int:
        # Envoy (proxy-wasm-cpp-host SharedData::set): a CAS of 0 always
        # writes; otherwise it must match the stored one. A missing key is
        # written whatever the CAS. Every write takes a new, non-zero CAS.
        if key in self.shared and cas and cas != self.shared[key][1]:
            return CAS_MISMATCH
        self.shared[key] = (value, self._next_cas)
        self._next_cas = self._next_cas % 0xFFFFFFFF + 1
        return OK


class Vm:
    """One instance of the module, as one Envoy worker runs it."""

    ROOT_ID = 1

    def __init__(self, envoy: Envoy):
        self.envoy = envoy
        self.logs: list[tuple[str, str]] = []
        self.calls: list[HttpCall] = []
        self.tick_period_ms: int | None = None
        self.streams: dict[int, Stream] = {}
        self.vm_started = self.configured = False
        self._next_id, self._next_token = self.ROOT_ID + 1, 1
        self._metrics: dict[int, tuple[int, str]] = {}
        self._next_metric = [METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM]
        self._current: int | None = None
        self._effective: int | None = None
        self._deferred: list = []
        self._caller = None
        self._configuring = False
        self._call_response: tuple[Headers, bytes, Headers | None] | None = None

        module = load_module()
        self.store = wasmtime.Store(_ENGINE)
        wasi = wasmtime.WasiConfig()
        wasi.env = sorted(envoy.env.items())
        # Envoy logs what the module writes to stdout at info, to stderr at error.
        wasi.stdout_custom = lambda data: self.logs.append(("info", bytes(data).decode("utf-8", "replace")))
        wasi.stderr_custom = lambda data: self.logs.append(("error", bytes(data).decode("utf-8", "replace")))
        self.store.set_wasi(wasi)
        linker = wasmtime.Linker(_ENGINE)
        linker.allow_shadowing = True
        linker.define_wasi()
        for imp in module.imports:
            if imp.module == "wasi_snapshot_preview1" and imp.name != "clock_time_get":
                continue
            impl = getattr(self, "_" + imp.name, None) or self._unimplemented(imp.module, imp.name)
            linker.define_func(imp.module, imp.name, imp.type, self._host_call(impl), access_caller=True)
        self.instance = linker.instantiate(self.store, module)
        self.exports = self.instance.exports(self.store)
        self._memory = self.exports["memory"]
        self._alloc = self.exports["proxy_on_memory_allocate"]

    # -- lifecycle (Envoy's order) -------------------------------------------

    def start(self) -> None:
        assert "proxy_abi_version_0_2_1" in self.exports, "not a proxy-wasm ABI 0.2.1 module"
        self.exports["_initialize"](self.store)
        self._invoke("proxy_on_context_create", None, self.ROOT_ID, 0)
        self.vm_started = bool(self._invoke("proxy_on_vm_start", self.ROOT_ID, self.ROOT_ID,
                                            len(self.envoy.vm_configuration)))
        if not self.vm_started:
            return
        # Envoy: the plugin configuration is readable only during on_configure.
        self._configuring = True
        try:
            self.configured = bool(self._invoke("proxy_on_configure", self.ROOT_ID, self.ROOT_ID,
                                                len(self.envoy.plugin_configuration)))
        finally:
            self._configuring = False

    def tick(self) -> None:
        assert self.tick_period_ms, "the filter set no tick period"
        self._invoke("proxy_on_tick", self.ROOT_ID, self.ROOT_ID)

    def new_stream(self, cluster: str = "provider_openai", request_id: str | None = None) -> Stream:
        """A request Envoy routed to `cluster` (the xds.cluster_name property)."""
        stream = Stream(self, self._next_id, cluster, request_id or f"req-{self._next_id}")
        self._next_id += 1
        self.streams[stream.id] = stream
        self._invoke("proxy_on_context_create", None, stream.id, self.ROOT_ID)
        return stream

    def pending(self, cluster: str | None = None) -> list[HttpCall]:
        return [c for c in self.calls if not c.answered and cluster in (None, c.cluster)]

    def respond(self, call: HttpCall, status: int = 200, headers=(), body: bytes | str = b"") -> None:
        """The answer to a call arrives (Envoy: onHttpCallSuccess)."""
        assert not call.answered, "answered twice"
        assert call.context_id == self.ROOT_ID or call.context_id in self.streams, "its stream is gone"
        call.answered = True
        body = _b(body)
        answer = Headers([(":status", str(status)), *headers])
        self._call_response = (answer, body, None)
        # Envoy: the answer stays readable until the callback returns.
        self._deferred.append(lambda: setattr(self, "_call_response", None))
        self._invoke("proxy_on_http_call_response", call.context_id, call.context_id, call.token,
                     len(answer.pairs), len(body), 0)

    def fail(self, call: HttpCall) -> None:
        """The call is reset (Envoy: onHttpCallFailure): the callback runs with no answer at all."""
        assert not call.answered
        call.answered = True
        self._invoke("proxy_on_http_call_response", call.context_id, call.context_id, call.token, 0, 0, 0)

    def log_text(self) -> str:
        return "\n".join(message for _, message in self.logs)

    # -- calling into the module ---------------------------------------------

    def _invoke(self, export: str, context_id: int | None, *args):
        outer = self._current is None
        saved = (self._current, self._effective)
        self._current, self._effective = context_id, None
        try:
            result = self.exports[export](self.store, *args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise Trapped(f"{export} trapped: {e}\nlog:\n{self.log_text()}") from e
        finally:
            self._current, self._effective = saved
        # Envoy: what a callback asked for (resume, local reply) happens after
        # the VM call returns (addAfterVmCallAction).
        while outer and self._deferred:
            self._deferred.pop(0)()
        return result

    def _host_call(self, impl):
        def call(caller, *args):
            saved, self._caller = self._caller, caller
            try:
                return impl(*args)
            finally:
                self._caller = saved
        return call

    def _unimplemented(self, module: str, name: str):
        def trap(*_):
            raise Unimplemented(f"{module}.{name} is not implemented by the emulated host")
        return trap

    def _read(self, ptr: int, size: int) -> bytes:
        return bytes(self._memory.read(self._caller, ptr, ptr + size))

    def _put(self, ptr: int, fmt: str, value: int) -> None:
        self._memory.write(self._caller, struct.pack(fmt, value), ptr)

    def _give(self, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        """Envoy: copyToPointerSize, into memory the module allocates and then owns."""
        ptr = 0
        if data:
            ptr = self._alloc(self._caller, len(data))
            if not ptr:
                return INVALID_MEMORY_ACCESS
            self._memory.write(self._caller, data, ptr)
        self._put(ptr_ptr, "<I", ptr)
        self._put(size_ptr, "<I", len(data))
        return OK

    def _context(self) -> Stream | None:
        """Envoy: contextOrEffectiveContext(); None is the root context."""
        cid = self._effective if self._effective is not None else self._current
        return self.streams.get(cid)

    # -- the imports: logging, time, timer ------------------------------------

    def _proxy_log(self, level, ptr, size):
        if level >= len(LOG_LEVELS):
            return BAD_ARGUMENT
        self.logs.append((LOG_LEVELS[level], self._read(ptr, size).decode("utf-8", "replace")))
        return OK

    def _proxy_get_current_time_nanoseconds(self, ptr):
        self._put(ptr, "<Q", self.envoy.clock_ns)
        return OK

    def _clock_time_get(self, clock_id, _precision, ptr):
        # WASI's clock, replaced: realtime and monotonic both read the fake
        # clock; Envoy supports no other clock (errno NOTSUP).
        if clock_id not in (0, 1):
            return 58
        self._put(ptr, "<Q", self.envoy.clock_ns)
        return 0

    def _proxy_set_tick_period_milliseconds(self, period):
        self.tick_period_ms = period
        return OK

    def _proxy_set_effective_context(self, context_id):
        if context_id != self.ROOT_ID and context_id not in self.streams:
            return BAD_ARGUMENT
        self._effective = context_id
        return OK

    # -- buffers ----------------------------------------------------------------

    def _buffer(self, kind: int):
        """(bytes-like or None, mutable) as Envoy's Context::getBuffer gives it."""
        stream = self._context()
        if kind == REQUEST_BODY and stream:
            return stream.req_body, True
        if kind == RESPONSE_BODY and stream:
            return stream.resp_body, True
        if kind == CALL_RESPONSE_BODY and self._call_response:
            return self._call_response[1], False
        if kind == VM_CONFIGURATION:
            return self.envoy.vm_configuration, False
        if kind == PLUGIN_CONFIGURATION and self._configuring:
            return self.envoy.plugin_configuration, False
        return None, False

    def _proxy_get_buffer_bytes(self, kind, start, max_size, ptr_ptr, size_ptr):
        data, _ = self._buffer(kind)
        if data is None:
            return NOT_FOUND
        # wasmtime hands i32 arguments over signed; Envoy reads them as
        # uint32 (the SDK asks for `usize::MAX` = 0xFFFFFFFF bytes, which a
        # signed -1 would turn into "all but the last byte").
        start, max_size = start & 0xFFFFFFFF, max_size & 0xFFFFFFFF
        # Envoy: reads are clipped to the buffer; nothing to copy writes nothing.
        chunk = bytes(data[start:start + max_size])
        return self._give(chunk, ptr_ptr, size_ptr) if chunk else OK

    def _proxy_set_buffer_bytes(self, kind, start, size, ptr, length):
        data, mutable = self._buffer(kind)
        if data is None:
            return NOT_FOUND
        if not mutable:
            return BAD_ARGUMENT
        value = self._read(ptr, length)
        # Envoy (Buffer::copyFrom): prepend (0, 0), replace all (0, >= length),
        # append (start >= length); anything else is refused.
        if start == 0 and size == 0:
            data[0:0] = value
        elif start == 0 and size >= len(data):
            data[:] = value
        elif start >= len(data):
            data += value
        else:
            return BAD_ARGUMENT
        return OK

    # -- header maps ----------------------------------------------------------

    def _map(self, kind: int, mutable: bool) -> Headers | None:
        """Envoy's getMap / getConstMap: None when that map is not available now."""
        if kind in (CALL_RESPONSE_HEADERS, CALL_RESPONSE_TRAILERS):
            if mutable or not self._call_response:
                return None
            return self._call_response[0] if kind == CALL_RESPONSE_HEADERS else self._call_response[2]
        stream = self._context()
        if stream is None:
            return None
        if stream.in_log and not mutable:
            return {REQUEST_HEADERS: stream.req_headers, RESPONSE_HEADERS: stream.resp_headers}.get(kind)
        # (No trailers in these tests: Envoy has no trailer map then either.)
        if kind == REQUEST_HEADERS and stream.req_headers_live:
            return stream.req_headers
        if kind == RESPONSE_HEADERS and stream.resp_headers_live:
            return stream.resp_headers
        return None

    def _proxy_get_header_map_pairs(self, kind, ptr_ptr, size_ptr):
        headers = self._map(kind, mutable=False)
        # Envoy: an unavailable map reads as empty.
        return self._give(pack_pairs(headers.pairs) if headers and headers.pairs else b"", ptr_ptr, size_ptr)

    def _proxy_get_header_map_value(self, kind, key_ptr, key_size, ptr_ptr, size_ptr):
        headers = self._map(kind, mutable=False)
        if headers is None:
            stream = self._context()
            return NOT_FOUND if stream and stream.in_log else BAD_ARGUMENT
        value = headers.get(self._read(key_ptr, key_size))
        return NOT_FOUND if value is None else self._give(value, ptr_ptr, size_ptr)

    def _edit_map(self, kind, edit) -> int:
        headers = self._map(kind, mutable=True)
        if headers is None:
            return BAD_ARGUMENT
        edit(headers)
        return OK

    def _proxy_replace_header_map_value(self, kind, key_ptr, key_size, value_ptr, value_size):
        key, value = self._read(key_ptr, key_size), self._read(value_ptr, value_size)
        return self._edit_map(kind, lambda h: h.replace(key, value))

    def _proxy_add_header_map_value(self, kind, key_ptr, key_size, value_ptr, value_size):
        key, value = self._read(key_ptr, key_size).lower(), self._read(value_ptr, value_size)
        return self._edit_map(kind, lambda h: h.pairs.append((key, value)))

    def _proxy_remove_header_map_value(self, kind, key_ptr, key_size):
        key = self._read(key_ptr, key_size)
        return self._edit_map(kind, lambda h: h.remove(key))

    def _proxy_set_header_map_pairs(self, kind, ptr, size):
        pairs = unpack_pairs(self._read(ptr, size))
        return self._edit_map(kind, lambda h: setattr(h, "pairs", Headers(pairs).pairs))

    # -- properties (filter state) ----------------------------------------------

    def _proxy_get_property(self, path_ptr, path_size, ptr_ptr, size_ptr):
        stream = self._context()
        if stream is None:
            return NOT_FOUND
        parts = self._read(path_ptr, path_size).split(b"\0")
        value = stream.properties.get(tuple(p.decode() for p in parts))
        if value is None and len(parts) == 1:
            # Envoy: a name that is no known property is looked up in the
            # filter state, where proxy_set_property put it (wasm.<name>).
            value = stream.filter_state.get("wasm." + parts[0].decode())
        return NOT_FOUND if value is None else self._give(value, ptr_ptr, size_ptr)

    def _proxy_set_property(self, path_ptr, path_size, value_ptr, value_size):
        stream = self._context()
        if stream is None:
            return NOT_FOUND  # Envoy: the root context has no stream info
        path = self._read(path_ptr, path_size).decode()
        stream.filter_state["wasm." + path] = self._read(value_ptr, value_size)
        return OK

    # -- shared data --------------------------------------------------------------

    def _proxy_get_shared_data(self, key_ptr, key_size, ptr_ptr, size_ptr, cas_ptr):
        key = self._read(key_ptr, key_size)
        if key in self.envoy.shared:
            value, cas = self.envoy.shared[key]
            status = self._give(value, ptr_ptr, size_ptr)
            self._put(cas_ptr, "<I", cas)
        else:
            status = NOT_FOUND
        hook = self.envoy.after_shared_read.pop(key, None)
        if hook:
            hook()
        return status

    def _proxy_set_shared_data(self, key_ptr, key_size, value_ptr, value_size, cas):
        return self.envoy.set_shared(self._read(key_ptr, key_size), self._read(value_ptr, value_size), cas)

    # -- metrics (one stat per name for every VM, as Envoy's scope keeps them) ----

    def _proxy_define_metric(self, kind, name_ptr, name_size, id_ptr):
        if kind > METRIC_HISTOGRAM:
            return BAD_ARGUMENT
        name = self._read(name_ptr, name_size).decode()
        metric_id, self._next_metric[kind] = self._next_metric[kind], self._next_metric[kind] + 4
        self._metrics[metric_id] = (kind, name)
        self.envoy.stats.setdefault(name, [] if kind == METRIC_HISTOGRAM else 0)
        self._put(id_ptr, "<I", metric_id)
        return OK

    def _proxy_increment_metric(self, metric_id, offset):
        kind, name = self._metrics.get(metric_id, (None, None))
        if kind is None:
            return NOT_FOUND
        # Envoy: counters only go up; gauges take any offset; histograms none.
        if kind == METRIC_HISTOGRAM or (kind == METRIC_COUNTER and offset <= 0):
            return BAD_ARGUMENT
        self.envoy.stats[name] += offset
        return OK

    def _proxy_record_metric(self, metric_id, value):
        kind, name = self._metrics.get(metric_id, (None, None))
        value &= 0xFFFFFFFFFFFFFFFF
        if kind is None:
            return NOT_FOUND
        if kind == METRIC_COUNTER:
            self.envoy.stats[name] += value  # Envoy: recording a counter adds
        elif kind == METRIC_GAUGE:
            self.envoy.stats[name] = value
        else:
            self.envoy.stats[name].append(value)
        return OK

    # -- calls out, and the stream's flow -------------------------------------------

    def _proxy_http_call(self, up_ptr, up_size, h_ptr, h_size, b_ptr, b_size, t_ptr, t_size,
                         timeout, token_ptr):
        cluster = self._read(up_ptr, up_size).decode()
        headers = Headers(unpack_pairs(self._read(h_ptr, h_size)))
        # Envoy: an unknown cluster, a negative timeout, or a request without
        # :path, :method or :authority is refused before anything is sent.
        if cluster not in self.envoy.clusters or timeout >= 2**31 or \
                not all(h in headers for h in (":path", ":method", ":authority")):
            return BAD_ARGUMENT
        token, self._next_token = self._next_token, self._next_token + 1
        context_id = self._effective if self._effective is not None else self._current
        self.calls.append(HttpCall(token, context_id, cluster, headers, self._read(b_ptr, b_size), timeout))
        self._put(token_ptr, "<I", token)
        return OK

    def _proxy_continue_stream(self, stream_type):
        stream = self._context()
        if stream_type not in (0, 1):
            return BAD_ARGUMENT
        if stream is None:
            return OK  # Envoy: the root context has no stream to continue
        # Envoy: the request's maps and buffer are gone at once; the stream
        # goes on after the VM call returns.
        stream.req_headers_live = False
        self._deferred.append(stream._release_request if stream_type == 0 else stream._release_response)
        return OK

    def _proxy_send_local_response(self, status, details_ptr, details_size, body_ptr, body_size,
                                   headers_ptr, headers_size, _grpc_status):
        stream = self._context()
        if stream is None:
            return OK  # Envoy: no decoder callbacks, nothing to answer
        reply = {"status": status, "details": self._read(details_ptr, details_size).decode(),
                 "headers": unpack_pairs(self._read(headers_ptr, headers_size)),
                 "body": self._read(body_ptr, body_size)}
        self._deferred.append(lambda: stream._local_reply(reply))
        return OK


class Stream:
    """One HTTP request and its response, as Envoy's filter manager runs them.

    Tests call send_request_headers / send_request_body (the client),
    send_response_headers / send_response_body (the provider) and finish();
    `upstream` is what the provider received, `downstream` what the client got.
    """

    def __init__(self, vm: Vm, context_id: int, cluster: str, request_id: str):
        self.vm, self.id = vm, context_id
        self.properties: dict[tuple[str, ...], bytes] = {
            ("request", "id"): request_id.encode(),
            ("xds", "cluster_name"): cluster.encode(),
        }
        self.filter_state: dict[str, bytes] = {}
        self.req_headers = self.resp_headers = None
        self.req_headers_live = self.resp_headers_live = False
        self.req_body: bytearray | None = None
        self.resp_body: bytearray | None = None
        self.req_buffering = self.resp_buffering = False
        self.req_end = self.resp_end = False
        self.upstream, self.downstream = Message(), Message()
        self.local_replies: list[dict] = []
        self.reset = self.in_log = False
        self.actions: list[tuple[str, int]] = []

    def state(self, name: str) -> str | None:
        """Filter state `wasm.<name>`, as the access log's %FILTER_STATE(...:PLAIN)% prints it."""
        value = self.filter_state.get("wasm." + name)
        return None if value is None else value.decode()

    def _call(self, export: str, *args) -> int:
        at = len(self.actions)
        self.actions.append((export, None))  # in call order, nested ones after it
        action = self.vm._invoke(export, self.id, self.id, *args)
        self.actions[at] = (export, action)
        return action

    # -- the request --------------------------------------------------------------

    def send_request_headers(self, headers, end_of_stream: bool = False) -> int:
        self.req_headers, self.req_headers_live, self.req_end = Headers(headers), True, end_of_stream
        action = self._call("proxy_on_request_headers", len(self.req_headers.pairs), int(end_of_stream))
        if action == CONTINUE:
            self._release_request()
        return action

    def send_request_body(self, chunk: bytes | str, end_of_stream: bool = False) -> int | None:
        if self.local_replies:
            return None  # Envoy: a local reply ends decoding; later data never reaches the filter
        self.req_end = end_of_stream
        # Envoy: while the filter buffers (it paused on data), new data joins
        # the buffer and the filter sees all of it; otherwise only the chunk.
        if self.req_buffering:
            self.req_body += _b(chunk)
        else:
            self.req_body = bytearray(_b(chunk))
        action = self._call("proxy_on_request_body", len(self.req_body), int(end_of_stream))
        if action == CONTINUE:
            self._release_request()
        elif not self.local_replies:
            self.req_buffering = True
        return action

    def _release_request(self) -> None:
        """Envoy's continueDecoding: held headers and buffered data go upstream."""
        if self.local_replies:
            return
        if self.upstream.headers is None:
            self.upstream.headers = self.req_headers.copy()
        self.req_headers_live = False
        self.upstream.body += self.req_body or b""
        self.req_body, self.req_buffering = None, False
        self.upstream.end = self.req_end

    # -- the response ---------------------------------------------------------------

    def send_response_headers(self, headers, end_of_stream: bool = False) -> int:
        assert self.upstream.headers is not None and not self.local_replies, "nothing went upstream"
        return self._encode_headers(Headers(headers), end_of_stream)

    def send_response_body(self, chunk: bytes | str, end_of_stream: bool = False) -> int | None:
        if self.reset or self.local_replies and self.downstream.end:
            return None
        return self._encode_body(_b(chunk), end_of_stream)

    def _encode_headers(self, headers: Headers, end_of_stream: bool) -> int:
        self.resp_headers, self.resp_headers_live, self.resp_end = headers, True, end_of_stream
        self.properties[("response", "code")] = struct.pack("<q", int(headers.get(":status")))
        action = self._call("proxy_on_response_headers", len(headers.pairs), int(end_of_stream))
        if action == CONTINUE:
            self._release_response()
        return action

    def _encode_body(self, chunk: bytes, end_of_stream: bool) -> int:
        self.resp_end = end_of_stream
        if self.resp_buffering:
            self.resp_body += chunk
        else:
            self.resp_body = bytearray(chunk)
        action = self._call("proxy_on_response_body", len(self.resp_body), int(end_of_stream))
        if action == CONTINUE:
            self._release_response()
        else:
            self.resp_buffering = True
        return action

    def _release_response(self) -> None:
        """Envoy's continueEncoding: held headers and buffered data go to the client."""
        if self.reset or self.downstream.end:
            return
        if self.downstream.headers is None:
            self.downstream.headers = self.resp_headers.copy()
        self.resp_headers_live = False
        self.downstream.body += self.resp_body or b""
        self.resp_body, self.resp_buffering = None, False
        self.downstream.end = self.resp_end

    def _local_reply(self, reply: dict) -> None:
        """Envoy's sendLocalReply, after the VM call that asked for it."""
        self.local_replies.append(reply)
        self.req_headers_live, self.req_body = False, None
        if self.downstream.headers is not None:
            self.reset = True  # Envoy: too late for a reply once headers went out: reset
            return
        headers = Headers([(":status", str(reply["status"])), *reply["headers"]])
        body = reply["body"]
        if body:
            headers.replace("content-length", str(len(body)).encode())
            if "content-type" not in headers:
                headers.replace("content-type", b"text/plain")
        if self.resp_headers is not None:
            # Envoy: a response had started through the filters; the reply
            # bypasses them (sendDirectLocalReply).
            self.properties[("response", "code")] = struct.pack("<q", reply["status"])
            self.downstream = Message(headers, bytearray(body), True)
            return
        # Envoy: a reply to the request goes through the encoder filters,
        # this one included (sendLocalReplyViaFilterChain).
        self.resp_buffering = False
        self._encode_headers(headers, end_of_stream=not body)
        if body:
            self._encode_body(body, end_of_stream=True)

    def finish(self) -> None:
        """The stream is over: proxy_on_done, proxy_on_log (the access log's
        turn: maps read as they ended), proxy_on_delete (the spec's order)."""
        done = self.vm._invoke("proxy_on_done", self.id, self.id)
        assert done, "on_done asked to wait for proxy_done, which this host does not emulate"
        self.in_log = True
        self.req_headers = self.upstream.headers or self.req_headers
        self.resp_headers = self.downstream.headers
        self.vm._invoke("proxy_on_log", self.id, self.id)
        self.vm._invoke("proxy_on_delete", self.id, self.id)
        del self.vm.streams[self.id]
