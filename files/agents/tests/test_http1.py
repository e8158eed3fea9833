"""The gateway's HTTP/1.1 client against a real socket server that sends scripted replies."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex.gateway.http1 import Client, HttpError
from cortex.testing.waiting import wait_for

Script = Callable[[socket.socket, bytes], bool]  # (conn, request) -> keep the connection?


@pytest.fixture
def server() -> Iterator[Callable[[Script], tuple[str, list]]]:
    """A loopback server that answers each request on a connection with `script`."""
    listeners: list[socket.socket] = []

    def start(script: Script) -> tuple[str, list]:
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        listeners.append(ls)
        accepted: list[socket.socket] = []

        def serve_conn(conn: socket.socket) -> None:
            buf = b""
            with conn:
                while True:
                    while b"\r\n\r\n" not in buf:
                        try:
                            data = conn.recv(65536)
                        except ConnectionResetError:  # a client dropping what it did not read
                            return
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    while len(buf) < length:
                        buf += conn.recv(65536)
                    body, buf = buf[:length], buf[length:]
                    if not script(conn, head + b"\r\n\r\n" + body):
                        return

        def accept() -> None:
            while True:
                try:
                    conn, _ = ls.accept()
                except OSError:
                    return
                accepted.append(conn)
                threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return f"http://127.0.0.1:{ls.getsockname()[1]}", accepted

    yield start
    for ls in listeners:
        ls.close()


def reply(status: str, body: bytes, headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n").encode() + body


def test_sized_replies_reuse_one_connection(server):
    seen = []

    def script(conn, req):
        seen.append(req)
        conn.sendall(reply("200 OK", b'{"ok":true}', "Content-Type: application/json\r\n"))
        return True

    url, accepted = server(script)
    client = Client()
    for _ in range(3):
        r = client.request("POST", url + "/v1/x?a=1", b'{"q":1}', {"X-Test": "yes"})
        assert (r.status, r.read(), r.headers["content-type"]) == (
            200, b'{"ok":true}', "application/json")
    assert len(accepted) == 1
    assert seen[0].startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
    assert b"Content-Length: 7\r\n" in seen[0] and b"X-Test: yes\r\n" in seen[0]
    assert seen[0].endswith(b'{"q":1}')


def test_a_body_larger_than_the_socket_buffers_goes_out_whole(server):
    """One send takes what the kernel has room for: the rest follows, in order."""
    def script(conn, req):
        body = req.partition(b"\r\n\r\n")[2]
        conn.sendall(reply("200 OK", hashlib.sha256(body).hexdigest().encode()))
        return True

    url, _ = server(script)
    body = random.Random(7).randbytes(8 << 20)
    got = Client().request("POST", url + "/", body).read()
    assert got == hashlib.sha256(body).hexdigest().encode()


def pooled_dead(client: Client) -> bool:
    """Every connection in the client's pool has something waiting (bytes or EOF)."""
    idle = [c for conns in client._idle.values() for c in conns]
    return bool(idle) and not any(c.alive() for c in idle)


def test_a_pooled_connection_with_stray_bytes_is_not_reused_for_a_post(server):
    pooled = threading.Event()

    def script(conn, req):
        conn.sendall(reply("200 OK", b"ok"))
        if pooled.wait(10):
            conn.sendall(b"HTTP/1.1 200 OK\r\n")  # junk, once the reply was read and pooled
        return True

    url, accepted = server(script)
    client = Client()
    assert client.request("POST", url + "/", b"{}").read() == b"ok"
    pooled.set()
    wait_for(lambda: pooled_dead(client), "the junk on the pooled connection", 10)
    assert client.request("POST", url + "/", b"{}").read() == b"ok"
    assert len(accepted) == 2  # the first connection had bytes nobody asked for


def test_chunked_bodies_split_anywhere_are_decoded(server):
    payload = [b"data: one\n\n", b"data: two\n\n", b"x" * 70000]
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in payload) + b"0\r\nT: 1\r\n\r\n"

    def script(conn, req):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, 210, 7):  # size lines, data and CRLFs split at odd places
            conn.sendall(wire[i:i + 7])
            time.sleep(0.001)  # spacing, not a wait: any split must decode the same
        conn.sendall(wire[210:])
        return True

    url, accepted = server(script)
    client = Client()
    assert client.request("GET", url + "/").read() == b"".join(payload)
    assert client.request("GET", url + "/").read() == b"".join(payload)
    assert len(accepted) == 1  # the trailer was consumed: the connection was reusable


def test_stream_yields_pieces_as_they_arrive(server):
    gate = threading.Event()

    def script(conn, req):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        gate.wait(5)
        conn.sendall(b"6\r\nsecond\r\n0\r\n\r\n")
        return True

    url, _ = server(script)
    pieces = Client().request("POST", url + "/", b"{}").stream()
    assert next(pieces) == b"first"  # before the server sends the rest
    gate.set()
    assert list(pieces) == [b"second"]


def test_close_delimited_http10_reply(server):
    def script(conn, req):
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        return False

    url, _ = server(script)
    assert Client().request("GET", url + "/").read() == b"until the end"


def test_a_stale_pooled_connection_is_retried_on_a_fresh_one(server):
    def script(conn, req):
        conn.sendall(reply("200 OK", b"ok"))
        return False  # close after each reply, as a neuron whose keep-alive ran out

    url, accepted = server(script)
    client = Client()
    assert client.request("POST", url + "/", b"{}").read() == b"ok"
    wait_for(lambda: pooled_dead(client), "the server's close on the pooled connection", 10)
    assert client.request("POST", url + "/", b"{}").read() == b"ok"
    assert len(accepted) == 2


def test_timeouts_and_refusals_are_http_errors(server):
    answered = threading.Event()

    def script(conn, req):
        answered.wait(10)  # no reply until the client has given up
        return False

    url, _ = server(script)
    with pytest.raises(HttpError, match=r"no reply within 0\.2 s"):
        Client(read_timeout=0.2).request("GET", url + "/")
    answered.set()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HttpError, match="cannot connect"):
        Client().request("GET", f"http://127.0.0.1:{port}/")


def test_a_reply_cut_mid_body_is_an_error_and_never_pooled(server):
    def script(conn, req):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        return False

    url, _ = server(script)
    client = Client()
    with pytest.raises(HttpError, match="closed mid-reply"):
        client.request("GET", url + "/").read()
    assert not any(client._idle.values())


def test_header_values_cannot_inject_headers(server):
    seen = []

    def script(conn, req):
        seen.append(req)
        conn.sendall(reply("204 No Content", b""))
        return True

    url, _ = server(script)
    r = Client().request("GET", url + "/", headers={"X-Evil": "a\r\nX-Injected: 1", "X-Ok": "b"})
    assert r.status == 204 and r.read() == b""
    assert b"X-Injected" not in seen[0] and b"X-Ok: b\r\n" in seen[0]


# -- what may not happen: a POST sent twice, a reply that never ends, lenient framing -------
def test_a_post_that_may_have_reached_the_neuron_is_never_sent_again(server):
    seen = []

    def script(conn, req):
        seen.append(req)
        if len(seen) == 2:
            return False  # it read the request, then died before answering
        conn.sendall(reply("200 OK", b"ok"))
        return True

    url, accepted = server(script)
    client = Client()
    assert client.request("POST", url + "/", b"{}").read() == b"ok"
    with pytest.raises(HttpError, match="closed mid-reply"):
        client.request("POST", url + "/", b'{"n": 2}')
    assert len(seen) == 2 and len(accepted) == 1  # not resent on a fresh connection


def test_a_reply_dribbling_bytes_ends_at_its_deadline(server):
    def script(conn, req):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        try:
            for _ in range(400):
                conn.sendall(b"x")
                time.sleep(0.02)  # a slow peer's pace, not a wait
        except OSError:
            pass
        return False

    url, _ = server(script)
    r = Client(read_timeout=5).request("GET", url + "/", deadline=0.5)
    started = time.monotonic()
    with pytest.raises(HttpError, match="deadline"):
        r.read()
    assert time.monotonic() - started < 3  # each read was quick; the whole was not


def test_interim_replies_are_bounded(server):
    def script(conn, req):
        n = 2 if b"few" in req else 100
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * n
                     + reply("200 OK", b"real"))
        return True

    url, _ = server(script)
    assert Client().request("GET", url + "/few").read() == b"real"
    with pytest.raises(HttpError, match="interim"):
        Client().request("GET", url + "/many")


@pytest.mark.parametrize("head", [
    b"Content-Length: -1\r\n", b"Content-Length: +5\r\n", b"Content-Length: 5, 5\r\n",
    b"Content-Length: 0x5\r\n"])
def test_a_bad_content_length_is_refused(server, head):
    def script(conn, req):
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"\r\nhello")
        return False

    url, _ = server(script)
    with pytest.raises(HttpError, match="Content-Length"):
        Client().request("GET", url + "/")


def test_trailers_are_bounded(server):
    def script(conn, req):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        try:
            for _ in range(200):
                conn.sendall(b"X-T: " + b"t" * 1000 + b"\r\n")
        except OSError:
            pass
        return False

    url, _ = server(script)
    with pytest.raises(HttpError, match="trailers"):
        Client().request("GET", url + "/").read()


# -- the chunk parser, by property -----------------------------------------------------------
def decode_chunked(wire: bytes, read_size: int) -> bytes:
    """`wire` (a chunked body) through the client's parser over a real socket pair, read
    at most `read_size` bytes at a time, so that every split of it is met."""
    from cortex.gateway import http1

    a, b = socket.socketpair()
    writer = threading.Thread(target=lambda: (b.sendall(wire), b.shutdown(socket.SHUT_WR)),
                              daemon=True)
    writer.start()
    old, http1.READ_SIZE = http1.READ_SIZE, read_size
    try:
        conn = http1.Connection(a)
        conn.timeout = 5.0
        a.settimeout(5.0)
        r = http1.Response(Client(), ("http", "x", 1), conn, 200,
                           {"transfer-encoding": "chunked"})
        return b"".join(r.stream())
    finally:
        http1.READ_SIZE = old
        writer.join()
        a.close()
        b.close()


hex_case = st.sampled_from(["{:x}", "{:X}", "{:04x}"])
chunks = st.lists(st.binary(min_size=1, max_size=300), max_size=8)
extension = st.sampled_from([b"", b";name=value", b';a="b c"', b"  ;x"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks, hex_case, extension, st.integers(min_value=1, max_value=9),
       st.binary(max_size=40).filter(lambda t: b"\r\n\r\n" not in t and b"\r\n" not in t))
def test_any_valid_chunked_body_decodes_to_its_data(pieces, fmt, ext, read_size, trailer):
    wire = b"".join(fmt.format(len(p)).encode() + ext + b"\r\n" + p + b"\r\n" for p in pieces)
    wire += b"0\r\n" + (b"X-T: " + trailer + b"\r\n" if trailer else b"") + b"\r\n"
    assert decode_chunked(wire, read_size) == b"".join(pieces)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=12).filter(
    lambda s: b"\r" not in s and b"\n" not in s and b";" not in s
    and not re.fullmatch(rb"[0-9A-Fa-f]{1,16}[ \t]*", s)), st.integers(1, 9))
def test_any_malformed_chunk_size_is_an_http_error(size, read_size):
    wire = b"2\r\nok\r\n" + size + b"\r\nabc\r\n0\r\n\r\n"
    with pytest.raises(HttpError, match="chunk size"):
        decode_chunked(wire, read_size)


@pytest.mark.parametrize("framing", ["sized", "chunked"])
def test_a_body_over_max_body_is_refused_and_never_pooled(server, framing):
    body = b"x" * 5000

    def script(conn, req):
        if framing == "sized":
            conn.sendall(reply("200 OK", body))
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"".join(b"%x\r\n%s\r\n" % (1000, body[i:i + 1000])
                                    for i in range(0, 5000, 1000)) + b"0\r\n\r\n")
        return True

    url, _ = server(script)
    client = Client(max_body=4096)
    with pytest.raises(HttpError, match="4096"):
        client.request("GET", url + "/").read()
    assert not any(client._idle.values())
    assert Client(max_body=5000).request("GET", url + "/").read() == body
