"""Clients of a zrollout server (docs/protocol.md): :class:`Client` (sync) and :class:`AsyncClient`.

Both hold one ZeroMQ DEALER socket connected to the server's ROUTER and may have any number of
calls in flight on it, matched to their replies by ``req_id`` (fresh per call, counting up from
1). Every call has a deadline (``timeout`` seconds, the client's default unless given per call);
when it passes, the call raises :class:`zrollout.errors.Timeout` and a reply arriving later is
dropped (counted in ``stats()["dropped_replies"]``). A lost server is seen as a timeout: ZeroMQ
reconnects silently. Errors raise the class of their code (``zrollout.errors``) with the field.

Sync :class:`Client` threading: no I/O thread. The thread that waits reads the socket itself
(one thread at a time reads; the others sleep on a condition and are handed their replies), so a
lone caller pays no thread hop. The socket is touched only under one lock and only by
non-blocking calls; the waiting reader sleeps in ``select`` on the socket's notification fd (the
ZeroMQ edge-triggered FD protocol), not on the socket. Every method may be called from any
number of threads at once; ``close()`` must not race with other calls. Iterating one stream from
two threads at once is not supported.

:class:`AsyncClient` runs on one asyncio loop (the one of its first call): a reader task
dispatches replies to futures and stream queues.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import select
import threading
import time
import zmq
import zmq.asyncio

from . import _protocol as wire
from . import errors

DEFAULT_TIMEOUT = 600.0  # seconds; the C++ client's default (comm/client.h)


def _curve_keys(curve_server_key: str | None, curve_secret_key: str | None) -> tuple[bytes, bytes, bytes] | None:
    """(server public, own public, own secret) from zcert files (``zrollout keygen``), or None."""
    if not curve_server_key and not curve_secret_key:
        return None
    if not curve_server_key or not curve_secret_key:
        raise errors.InvalidArgument("curve_server_key: give both curve_server_key (the server's .key) and "
                                     "curve_secret_key (this client's .key_secret)")
    import zmq.auth  # pyzmq's reader of czmq zcert files
    server_public, _ = zmq.auth.load_certificate(curve_server_key)
    public, secret = zmq.auth.load_certificate(curve_secret_key)
    if not secret:
        raise errors.InvalidArgument(f"curve_secret_key: {curve_secret_key} has no secret-key (give the .key_secret file)")
    return server_public, public, secret


def _make_socket(ctx: zmq.Context, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if curve is not None:  # CURVE: a key the server does not list gets no answer (calls time out)
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.connect(endpoint)
    return sock


class _Pending:
    """One call in flight: what arrived for it so far ((op, body) pairs), in arrival order."""

    __slots__ = ("req_id", "op", "deadline", "items", "done")

    def __init__(self, req_id: int, op: str, deadline: float):
        self.req_id = req_id
        self.op = op
        self.deadline = deadline
        self.items: collections.deque = collections.deque()
        self.done = False  # its final reply (or error) has arrived


class Stream:
    """The chunks of a streamed generate call, as an iterator of ``generate.chunk`` bodies.

    When the iteration ends, :attr:`reply` holds the final ``generate.reply`` body; an error
    reply raises from the iteration. :meth:`result` drains the remaining chunks and returns the
    reply.
    """

    def __init__(self, client: "Client", pending: _Pending):
        self._client = client
        self._pending = pending
        self.reply: dict | None = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.reply is not None:
            raise StopIteration
        op, body = self._client._next_item(self._pending)
        if op == wire.CHUNK_OP:
            return body
        self.reply = body
        raise StopIteration

    def result(self) -> dict:
        for _ in self:
            pass
        return self.reply


class Client(wire.Ops):
    """Synchronous client. ``Client("tcp://127.0.0.1:5555", timeout=60)``; a context manager.

    Every op of protocol.md §3 is a method (``generate``, ``score``, ``abort``, ``health``,
    ``update_weights``...); see :class:`zrollout._protocol.Ops`. ``submit(op, body)`` starts a call
    and returns a handle whose ``result()`` waits, to keep many calls in flight from one thread.
    """

    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT, context: zmq.Context | None = None,
                 curve_server_key: str | None = None, curve_secret_key: str | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock = _make_socket(self._ctx, endpoint, _curve_keys(curve_server_key, curve_secret_key))
        self._fd = self._sock.getsockopt(zmq.FD)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._reading = False   # a thread sleeps in select() for the socket
        self._dropped = 0
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()  # wakes the reader when another thread took its edge
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Closes the socket; calls still waiting raise ``Unavailable``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for p in self._pending.values():
                p.items.append((wire.ERROR_OP, {"req_id": p.req_id, "code": "unavailable",
                                                "message": "client closed"}))
                p.done = True
            self._pending.clear()
            self._cond.notify_all()
            self._sock.close(linger=0)
        self._wake()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def stats(self) -> dict:
        with self._lock:
            return {"dropped_replies": self._dropped, "in_flight": len(self._pending)}

    # -- calls --------------------------------------------------------------------------------
    def submit(self, op: str, body: dict, timeout: float | None = None) -> "Call":
        """Sends a call now and returns its handle (``.result()`` waits; ``.stream()`` iterates)."""
        return Call(self, self._start(op, wire.prepare_body(op, body), timeout))

    def _call(self, op: str, body: dict, timeout: float | None, stream: bool = False):
        pending = self._start(op, body, timeout)
        if stream:
            return Stream(self, pending)
        return Call(self, pending).result()

    def _start(self, op: str, body: dict, timeout: float | None) -> _Pending:
        req_id = next(self._ids)
        body["req_id"] = req_id
        frames = wire.encode(op, body)
        pending = _Pending(req_id, op, time.monotonic() + (self.timeout if timeout is None else timeout))
        with self._lock:
            if self._closed:
                raise errors.Unavailable("client closed", req_id=req_id)
            self._pending[req_id] = pending
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as e:
                del self._pending[req_id]
                raise errors.Unavailable(f"{self.endpoint}: cannot send: {e}", req_id=req_id) from None
            # Sending may have consumed the socket's readable edge while another thread sleeps in
            # select(): take what arrived here and hand it over.
            if self._drain_locked() and self._reading:
                self._wake()
        return pending

    def _next_item(self, pending: _Pending) -> tuple[str, dict]:
        """The next (op, body) of a call, waiting until its deadline; raises its error reply."""
        op, body = self._wait(pending)
        err = wire.reply_error(op, body)
        if err is not None:
            raise err
        return op, body

    def _wait(self, pending: _Pending) -> tuple[str, dict]:
        with self._lock:
            while True:
                if pending.items:
                    return pending.items.popleft()
                remaining = pending.deadline - time.monotonic()
                if remaining <= 0:
                    self._pending.pop(pending.req_id, None)
                    raise errors.Timeout(f"{pending.op}: no reply within the deadline from {self.endpoint}",
                                         req_id=pending.req_id)
                if self._closed:
                    raise errors.Unavailable("client closed", req_id=pending.req_id)
                if self._reading:
                    self._cond.wait(remaining)
                    continue
                if self._drain_locked():
                    continue
                self._read_unlocked(remaining)

    def _read_unlocked(self, remaining: float) -> None:
        """Sleeps (lock released) until the socket or the wake pipe signals, then reads."""
        self._reading = True
        self._lock.release()
        try:
            select.select([self._fd, self._wake_r], [], [], remaining)
        finally:
            self._lock.acquire()
            self._reading = False
        try:
            while os.read(self._wake_r, 64):
                pass
        except (BlockingIOError, OSError):
            pass
        if not self._closed:
            self._drain_locked()
        self._cond.notify_all()  # another waiter may become the reader

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _drain_locked(self) -> bool:
        """Receives every message waiting on the socket (lock held); True if any arrived."""
        got = False
        while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = self._sock.recv_multipart(flags=zmq.NOBLOCK)
            got = True
            self._dispatch(frames)
        if got:
            self._cond.notify_all()
        return got

    def _dispatch(self, frames: list[bytes]) -> None:
        try:
            op = frames[0].decode()
            body = wire.unpack(frames[1])
            req_id = int(body.get("req_id") or 0)
        except Exception:
            self._dropped += 1
            return
        pending = self._pending.get(req_id)
        if pending is None:
            self._dropped += 1
            return
        pending.items.append((op, body))
        if op != wire.CHUNK_OP:
            pending.done = True
            del self._pending[pending.req_id]


class Call:
    """A call in flight on a sync :class:`Client` (from ``submit``)."""

    def __init__(self, client: Client, pending: _Pending):
        self._client = client
        self._pending = pending
        self.req_id = pending.req_id

    def result(self) -> dict:
        """Waits for the final reply (chunks of a streamed call are skipped) and returns its body."""
        while True:
            op, body = self._client._next_item(self._pending)
            if op != wire.CHUNK_OP:
                return body

    def stream(self) -> Stream:
        return Stream(self._client, self._pending)


class AsyncStream:
    """Async iterator over the ``generate.chunk`` bodies of a streamed call; then :attr:`reply`."""

    def __init__(self, client: "AsyncClient", req_id: int, queue: asyncio.Queue, deadline: float, op: str):
        self._client = client
        self._req_id = req_id
        self._queue = queue
        self._deadline = deadline
        self._op = op
        self.reply: dict | None = None

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        if self.reply is not None:
            raise StopAsyncIteration
        op, body = await self._client._get(self._req_id, self._queue, self._deadline, self._op)
        if op == wire.CHUNK_OP:
            return body
        self.reply = body
        raise StopAsyncIteration

    async def result(self) -> dict:
        async for _ in self:
            pass
        return self.reply


class AsyncClient(wire.Ops):
    """asyncio client: ``await c.generate(...)``; ``s = await c.generate(..., stream=True)`` gives an
    :class:`AsyncStream` (``async for chunk in s``). Every op of protocol.md §3 is a coroutine
    method. Bound to the event loop of its first call; an async context manager.
    """

    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT, context: zmq.asyncio.Context | None = None,
                 curve_server_key: str | None = None, curve_secret_key: str | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self._curve = _curve_keys(curve_server_key, curve_secret_key)
        self._ctx = context
        self._sock: zmq.asyncio.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Task | None = None
        self._queues: dict[int, asyncio.Queue] = {}
        self._ids = itertools.count(1)
        self._dropped = 0
        self._closed = False

    def _ensure_open(self) -> None:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise errors.Unavailable("client closed")
        if self._sock is None:
            self._ctx = self._ctx or zmq.asyncio.Context.instance()
            self._sock = _make_socket(self._ctx, self.endpoint, self._curve)
            self._loop = loop
            self._reader = loop.create_task(self._read_loop())
        elif loop is not self._loop:
            raise errors.Unavailable("AsyncClient: used from another event loop than its first call's")

    async def _read_loop(self) -> None:
        while True:
            try:
                frames = await self._sock.recv_multipart()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            try:
                op = frames[0].decode()
                body = wire.unpack(frames[1])
                req_id = int(body.get("req_id") or 0)
            except Exception:
                self._dropped += 1
                continue
            queue = self._queues.get(req_id)
            if queue is None:
                self._dropped += 1
                continue
            if op != wire.CHUNK_OP:
                del self._queues[req_id]
            queue.put_nowait((op, body))

    async def _call(self, op: str, body: dict, timeout: float | None, stream: bool = False):
        self._ensure_open()
        req_id = next(self._ids)
        body["req_id"] = req_id
        frames = wire.encode(op, body)
        deadline = self._loop.time() + (self.timeout if timeout is None else timeout)
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[req_id] = queue
        try:
            await self._sock.send_multipart(frames, copy=False)
        except zmq.ZMQError as e:
            self._queues.pop(req_id, None)
            raise errors.Unavailable(f"{self.endpoint}: cannot send: {e}", req_id=req_id) from None
        if stream:
            return AsyncStream(self, req_id, queue, deadline, op)
        while True:
            reply_op, reply = await self._get(req_id, queue, deadline, op)
            if reply_op != wire.CHUNK_OP:
                return reply

    async def _get(self, req_id: int, queue: asyncio.Queue, deadline: float, op: str) -> tuple[str, dict]:
        remaining = deadline - self._loop.time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            reply_op, body = await asyncio.wait_for(queue.get(), remaining)
        except asyncio.TimeoutError:
            self._queues.pop(req_id, None)
            raise errors.Timeout(f"{op}: no reply within the deadline from {self.endpoint}", req_id=req_id) from None
        err = wire.reply_error(reply_op, body)
        if err is not None:
            raise err
        return reply_op, body

    def submit(self, op: str, body: dict, timeout: float | None = None) -> asyncio.Task:
        """Starts a call as a task (the request is sent when the task first runs)."""
        return asyncio.ensure_future(self._call(op, wire.prepare_body(op, body), timeout))

    def stats(self) -> dict:
        return {"dropped_replies": self._dropped, "in_flight": len(self._queues)}

    async def close(self) -> None:
        """Closes the socket; calls still waiting raise ``Unavailable``."""
        if self._closed:
            return
        self._closed = True
        for req_id, queue in list(self._queues.items()):
            queue.put_nowait((wire.ERROR_OP, {"req_id": req_id, "code": "unavailable", "message": "client closed"}))
        self._queues.clear()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        if self._sock is not None:
            self._sock.close(linger=0)

    def _close_now(self) -> None:
        """Closes the socket without the loop (its loop may be closed already)."""
        self._closed = True
        if self._sock is not None:
            self._sock.close(linger=0)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
