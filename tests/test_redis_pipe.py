"""The limiter's lean Redis connection, against the real Redis (REDIS_URL), a scripted one and a silent
TCP peer."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from lib.redis_pipe import RedisPipe, ReplyError, Script, encode

REDIS_URL = os.environ.get("REDIS_URL", "")


class ScriptedRedis:
    """A TCP peer that reads RESP commands as Redis does (arrays of bulk strings, lengths checked
    byte for byte, parsed here without hiredis), records them, and answers each from `replies`."""

    def __init__(self, replies: dict[bytes, bytes]) -> None:
        self.replies = replies
        self.commands: list[list[bytes]] = []
        self.raw = b""
        self.errors: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readuntil(b"\r\n")
                assert header[:1] == b"*", f"not an array: {header!r}"
                command = []
                for _ in range(int(header[1:-2])):
                    length_line = await reader.readuntil(b"\r\n")
                    assert length_line[:1] == b"$", f"not a bulk string: {length_line!r}"
                    value = await reader.readexactly(int(length_line[1:-2]) + 2)
                    assert value[-2:] == b"\r\n", f"bulk string longer than its length: {value!r}"
                    command.append(value[:-2])
                    header += length_line + value
                self.raw += header
                self.commands.append(command)
                writer.write(self.replies.get(command[0].upper(), b"-ERR unknown command\r\n"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # the client closed
        except AssertionError as exc:
            self.errors.append(str(exc))
        finally:
            writer.close()


@pytest.mark.asyncio
async def test_commands_reach_redis_as_resp_arrays_and_replies_come_back_to_their_callers():
    script = Script("return 1")
    redis = ScriptedRedis(
        {
            b"AUTH": b"+OK\r\n",
            b"SELECT": b"+OK\r\n",
            b"SCRIPT": b"$40\r\n" + script.sha.encode() + b"\r\n",
            b"SET": b"+OK\r\n",
            b"GET": b"$-1\r\n",
            b"INCRBY": b":12\r\n",
        }
    )
    server = await asyncio.start_server(redis.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = RedisPipe(f"redis://us%3Aer:p%40ss@127.0.0.1:{port}/3", scripts=(script,))
    value = b"\x00v\r\n$3\r\nnot a command"  # binary, with what a naive encoding would split on

    replies = await asyncio.gather(
        pipe.execute("SET", "k", value, "é", 1.5),
        pipe.execute("GET", "missing"),
        pipe.execute("NOPE"),
        pipe.execute("INCRBY", "n", 12),
        return_exceptions=True,
    )
    pipe.close()
    server.close()

    assert redis.errors == []
    assert redis.commands == [
        [b"AUTH", b"us:er", b"p@ss"],  # the URL's user and password, unquoted, before anything else
        [b"SELECT", b"3"],
        [b"SCRIPT", b"LOAD", b"return 1"],
        [b"SET", b"k", value, "é".encode(), b"1.5"],
        [b"GET", b"missing"],
        [b"NOPE"],
        [b"INCRBY", b"n", b"12"],
    ]
    set_command = b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n$2\r\n\xc3\xa9\r\n$3\r\n1.5\r\n" % (len(value), value)
    assert set_command in redis.raw
    ok, missing, refused, counted = replies
    assert (ok, missing, counted) == (b"OK", None, 12)
    assert isinstance(refused, ReplyError) and str(refused) == "ERR unknown command"


def test_an_unknown_url_scheme_is_refused():
    with pytest.raises(ValueError, match="http"):
        RedisPipe("http://127.0.0.1:6379")


@pytest.fixture
def key() -> str:
    name = f"tokios:test:pipe:{uuid.uuid4().hex}"
    yield name
    if REDIS_URL:
        import redis

        redis.Redis.from_url(REDIS_URL).delete(name)


@pytest.mark.redis
@pytest.mark.asyncio
async def test_concurrent_commands_get_their_own_replies_in_order(key):
    pipe = RedisPipe(REDIS_URL)
    replies = await asyncio.gather(*(pipe.execute("INCRBY", key, 1) for _ in range(500)))
    assert sorted(replies) == list(range(1, 501))
    assert replies == list(range(1, 501))  # issued in one loop turn, answered in order
    assert await pipe.execute("GET", key) == b"500"
    pipe.close()


@pytest.mark.redis
@pytest.mark.asyncio
async def test_an_error_reply_fails_only_its_own_command(key):
    pipe = RedisPipe(REDIS_URL)
    ok, bad, after = await asyncio.gather(
        pipe.execute("SET", key, "x"), pipe.execute("INCR", key), pipe.execute("GET", key), return_exceptions=True
    )
    assert ok == b"OK"
    assert isinstance(bad, ReplyError) and "not an integer" in str(bad)
    assert after == b"x"
    pipe.close()


@pytest.mark.redis
@pytest.mark.asyncio
async def test_the_database_number_in_the_url_is_selected(key):
    import redis

    base = REDIS_URL.rsplit("/", 1)[0] if REDIS_URL.count("/") > 2 else REDIS_URL
    pipe = RedisPipe(f"{base}/14")
    await pipe.execute("SET", key, "in-14")
    assert redis.Redis.from_url(f"{base}/14").get(key) == b"in-14"
    assert redis.Redis.from_url(f"{base}/13").get(key) is None
    redis.Redis.from_url(f"{base}/14").delete(key)
    pipe.close()


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_script_forgotten_by_redis_is_loaded_again(key):
    script = Script(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    pipe = RedisPipe(REDIS_URL, scripts=(script,))
    assert await pipe.evalsha(script, [key], [5]) == 5  # loaded on connect
    await pipe.execute("SCRIPT", "FLUSH")
    assert await pipe.evalsha(script, [key], [2]) == 7  # NOSCRIPT, loaded, run once
    pipe.close()


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_killed_connection_fails_what_was_in_flight_and_the_next_command_reconnects(key):
    import redis

    pipe = RedisPipe(REDIS_URL)
    await pipe.execute("CLIENT", "SETNAME", "tokios-pipe-test")
    blocked = asyncio.ensure_future(pipe.execute("BLPOP", key, 5))
    await asyncio.sleep(0.05)
    killer = redis.Redis.from_url(REDIS_URL)
    for client in killer.client_list():
        if client.get("name") == "tokios-pipe-test":
            killer.client_kill_filter(_id=client["id"])
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(blocked, 2)
    assert not pipe.connected
    assert await pipe.execute("SET", key, "back") == b"OK"  # a new connection
    assert pipe.connected
    pipe.close()


@pytest.mark.asyncio
async def test_a_redis_that_stops_answering_fails_commands_after_the_timeout():
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader, writer):  # accepts and reads, never answers
        accepted.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = RedisPipe(f"redis://127.0.0.1:{port}", timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await pipe.execute("PING")
    assert 0.25 <= loop.time() - started < 2
    assert len(accepted) == 1
    pipe.close()
    server.close()


@pytest.mark.asyncio
async def test_an_unreachable_redis_raises_a_connection_error_quickly():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    pipe = RedisPipe(f"redis://127.0.0.1:{port}", timeout=1)
    with pytest.raises(OSError):
        await pipe.execute("PING")


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_refused_handshake_is_reported_and_nothing_is_sent():
    host = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split("@")[-1]
    pipe = RedisPipe(f"redis://:wrong-password@{host}/0")  # this Redis has no password, so AUTH fails
    with pytest.raises(ReplyError, match="AUTH"):
        await pipe.execute("PING")
    assert not pipe.connected


@pytest.mark.redis
@pytest.mark.asyncio
async def test_send_nowait_needs_a_live_connection(key):
    pipe = RedisPipe(REDIS_URL)
    with pytest.raises(ConnectionError):
        await pipe.send_nowait("GET", key)
    await pipe.execute("SET", key, "1")
    assert await pipe.send_nowait("GET", key) == b"1"
    pipe.close()


@pytest.mark.redis
@pytest.mark.asyncio
async def test_flush_writes_the_queued_commands_before_the_loop_turn_ends(key):
    pipe = RedisPipe(REDIS_URL)
    await pipe.execute("PING")
    written: list[bytes] = []
    transport = pipe._protocol.transport
    write = transport.write
    transport.write = lambda data: (written.append(data), write(data))[1]

    reply = pipe.send_nowait("SET", key, "1")
    queued = list(written)
    pipe.flush()

    assert queued == []  # without flush, the command waits for the end of the turn
    assert written == [encode(("SET", key, "1"))]
    assert await reply == b"OK"
    pipe.close()


@pytest.mark.asyncio
async def test_after_a_failed_connect_commands_fail_at_once_for_a_moment_then_try_again(monkeypatch):
    from lib import redis_pipe

    accepted = []

    async def silent(reader, writer):  # accepts, never answers: the handshake times out
        accepted.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(redis_pipe, "RECONNECT_PAUSE", 0.5)
    pipe = RedisPipe(f"redis://:secret@127.0.0.1:{port}", timeout=0.2)  # AUTH makes connecting wait
    loop = asyncio.get_running_loop()

    with pytest.raises(TimeoutError):
        await pipe.execute("PING")
    started = loop.time()
    with pytest.raises(ConnectionError, match="unreachable"):
        await pipe.execute("PING")
    assert loop.time() - started < 0.05
    assert len(accepted) == 1

    await asyncio.sleep(0.5)
    with pytest.raises(TimeoutError):
        await pipe.execute("PING")
    assert len(accepted) == 2  # tried again after the pause
    server.close()
