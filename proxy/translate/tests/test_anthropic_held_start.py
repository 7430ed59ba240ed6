"""`message_start` held back until the next event goes out, with the exact input count learnt meanwhile."""

from __future__ import annotations

from proxy.translate.anthropic import MessagesRequestInfo, MessagesStreamTranslator

from .upstream import chunk, parse_sse, usage_chunk


def translator(*, emit: bool = True) -> MessagesStreamTranslator:
    info = MessagesRequestInfo(model="claude-local", stream=emit, max_tokens=100)
    return MessagesStreamTranslator(info, input_tokens_hint=5, emit_events=emit)


def names(raw: bytes) -> list[str | None]:
    return [name for name, _ in parse_sse(raw)]


def start_tokens(raw: bytes) -> int:
    name, data = parse_sse(raw)[0]
    assert name == "message_start"
    return data["message"]["usage"]["input_tokens"]


def test_a_held_start_goes_out_with_the_first_event_and_the_count_learnt_meanwhile():
    t = translator()

    assert t.start(hold=True) == b"" and t.start_held
    t.exact_input_tokens(42)
    out = t.feed(chunk({"role": "assistant", "content": "Hi"}))

    assert names(out) == ["message_start", "content_block_start", "content_block_delta"]
    assert start_tokens(out) == 42 and not t.start_held
    rest = t.feed(chunk({"content": "!"}, "stop")) + t.finish()
    assert "message_start" not in names(rest)


def test_a_start_not_held_says_the_estimate_and_a_later_count_only_stands_in_for_missing_usage():
    t = translator()

    assert start_tokens(t.start()) == 5
    t.exact_input_tokens(42)
    t.feed(chunk({"content": "Hi"}, "stop"))
    end = parse_sse(t.finish())

    assert end[-2][1]["usage"]["input_tokens"] == 42  # the model reported none
    reported = translator()
    reported.start()
    reported.exact_input_tokens(42)
    reported.feed(usage_chunk(11, 1))
    assert parse_sse(reported.finish())[-2][1]["usage"]["input_tokens"] == 11  # the model's own count wins


def test_a_ping_an_error_or_the_end_release_a_held_start_first_and_once():
    for release in (
        lambda t: t.ping() + t.ping(),
        lambda t: t.error("boom", "api_error"),
        lambda t: t.finish(),
    ):
        t = translator()
        t.start(hold=True)
        events = names(release(t))
        assert events[0] == "message_start" and events.count("message_start") == 1, events


def test_a_chunk_of_nothing_still_releases_the_start():
    t = translator()
    t.start(hold=True)

    assert names(t.feed(chunk({"role": "assistant"}))) == ["message_start"]


def test_a_whole_message_holds_nothing():
    t = translator(emit=False)

    assert t.start(hold=True) == b"" and not t.start_held
    assert t.ping() == b""
