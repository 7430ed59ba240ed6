from __future__ import annotations

import json

import pytest

from proxy.translate.sse import SSEParser, encode_event

CHUNKS = [
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "héllo\nworld"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": ' "quoted"'}}]},
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
]
STREAM = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in CHUNKS) + b"data: [DONE]\n\n"


def parse_all(parser: SSEParser, pieces: list[bytes]) -> list:
    out = []
    for piece in pieces:
        out += parser.feed(piece)
    return out + parser.flush()


def test_encode_event_writes_event_and_one_compact_data_line():
    frame = encode_event("message_stop", {"type": "message_stop", "text": "a\nb é"})
    head, data = frame.split(b"\n", 1)
    assert head == b"event: message_stop"
    assert data.startswith(b"data: {") and data.endswith(b"}\n\n")
    assert data.count(b"\n") == 2  # the payload's own newline is escaped
    assert b", " not in data and b": " not in data[6:]
    assert json.loads(data[6:]) == {"type": "message_stop", "text": "a\nb é"}


def test_encode_event_without_name_has_only_data():
    assert encode_event(None, {"a": 1}) == b'data: {"a":1}\n\n'


def test_it_parses_a_whole_stream_in_one_read():
    assert parse_all(SSEParser(), [STREAM]) == [*CHUNKS, "[DONE]"]


def test_it_survives_every_byte_boundary():
    pieces = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert parse_all(SSEParser(), pieces) == [*CHUNKS, "[DONE]"]


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_it_accepts_crlf_and_cr_line_ends(eol):
    raw = STREAM.replace(b"\n", eol)
    assert parse_all(SSEParser(), [raw]) == [*CHUNKS, "[DONE]"]
    # and with the CR and LF of one line end in different reads
    pieces = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    assert parse_all(SSEParser(), pieces) == [*CHUNKS, "[DONE]"]


def test_it_ignores_comments_ids_and_retry():
    raw = b': ping\n\nid: 4\nretry: 10\ndata: {"a": 1}\n\n:keep-alive\n\n'
    assert parse_all(SSEParser(), [raw]) == [{"a": 1}]


def test_it_joins_multi_line_data():
    raw = b'data: {"a":\ndata: [1,\ndata: 2]}\n\n'
    assert parse_all(SSEParser(), [raw]) == [{"a": [1, 2]}]


def test_data_without_space_after_colon_is_accepted():
    assert parse_all(SSEParser(), [b'data:{"a":1}\n\n']) == [{"a": 1}]


def test_flush_delivers_a_last_event_without_blank_line():
    parser = SSEParser()
    assert parser.feed(b'data: {"a":1}\n\ndata: [DONE]') == [{"a": 1}]
    assert parser.flush() == ["[DONE]"]
    parser = SSEParser()
    assert parser.feed(b'data: {"b":2}\n') == []
    assert parser.flush() == [{"b": 2}]


def test_llama_cpp_legacy_error_field_becomes_an_error_dict():
    raw = b'data: {"a":1}\n\nerror: {"code":500,"message":"context overflow","type":"server_error"}\n\n'
    out = parse_all(SSEParser(), [raw])
    assert out[0] == {"a": 1}
    assert out[1]["error"]["message"] == "context overflow"
    assert out[1]["error"]["code"] == 500


def test_named_error_event_is_wrapped():
    out = parse_all(SSEParser(), [b'event: error\ndata: {"message":"boom"}\n\n'])
    assert out == [{"error": {"message": "boom"}}]


def test_nested_data_error_passes_through():
    out = parse_all(SSEParser(), [b'data: {"error":{"message":"x","type":"server_error"}}\n\n'])
    assert out == [{"error": {"message": "x", "type": "server_error"}}]


def test_unframed_ollama_error_body_is_returned_as_error_dict():
    body = b'{"error":{"message":"model \\"x\\" not found","type":"not_found_error","param":null,"code":null}}'
    out = parse_all(SSEParser(), [body[:10], body[10:]])
    assert out == [json.loads(body)]


def test_unframed_flat_vllm_error_is_wrapped():
    body = b'{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}\n'
    [out] = parse_all(SSEParser(), [body])
    assert out["error"]["message"] == "bad"


def test_unparseable_data_becomes_an_error_not_an_exception():
    [out] = parse_all(SSEParser(), [b"data: {not json\n\n"])
    assert "error" in out and "{not json" in out["error"]["message"]


def test_done_is_recognised_by_prefix():
    assert parse_all(SSEParser(), [b"data: [DONE]extra\n\n"]) == ["[DONE]"]


def test_utf8_split_inside_a_character():
    raw = 'data: {"t":"日本"}\n\n'.encode()
    cut = raw.index("本".encode()) + 1
    assert parse_all(SSEParser(), [raw[:cut], raw[cut:]]) == [{"t": "日本"}]
