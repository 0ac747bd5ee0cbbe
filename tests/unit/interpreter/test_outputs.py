"""Jupyter IOPub messages become the Code Interpreter SDKs' events."""

from __future__ import annotations

from sbx.interpreter import outputs


def msg(kind: str, content: dict[str, object]) -> dict[str, object]:
    return {"msg_type": kind, "header": {"msg_type": kind}, "content": content}


def test_stream_events_keep_their_channel_and_carry_a_nanosecond_timestamp() -> None:
    out = outputs.from_iopub(msg("stream", {"name": "stdout", "text": "hi\n"}))
    err = outputs.from_iopub(msg("stream", {"name": "stderr", "text": "oops\n"}))
    assert out is not None and err is not None
    assert (out["type"], out["text"]) == ("stdout", "hi\n")
    assert (err["type"], err["text"]) == ("stderr", "oops\n")
    assert out["timestamp"] > 1_600_000_000 * 10**9


def test_execute_result_is_the_main_result_display_data_is_not() -> None:
    bundle = {"text/plain": "2", "text/html": "<b>2</b>"}
    main = outputs.from_iopub(msg("execute_result", {"data": bundle, "execution_count": 3}))
    shown = outputs.from_iopub(msg("display_data", {"data": bundle}))
    assert main == {"type": "result", "is_main_result": True, "text": "2", "html": "<b>2</b>"}
    assert shown is not None and shown["is_main_result"] is False


def test_every_sdk_format_has_its_field_and_the_rest_goes_to_extra() -> None:
    bundle = {mime: f"v-{field}" for mime, field in outputs.FORMATS.items()}
    bundle["application/vnd.custom+json"] = "x"
    event = outputs.result(bundle, False)
    for field in ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json",
                  "javascript", "chart"):
        assert event[field] == f"v-{field}"
    assert event["extra"] == {"application/vnd.custom+json": "x"}


def test_error_joins_the_traceback_lines() -> None:
    event = outputs.from_iopub(msg("error", {"ename": "ValueError", "evalue": "bad",
                                             "traceback": ["line 1", "line 2"]}))
    assert event == {"type": "error", "name": "ValueError", "value": "bad",
                     "traceback": "line 1\nline 2"}


def test_messages_without_an_event_are_skipped() -> None:
    for kind in ("status", "execute_input", "clear_output", "comm_open"):
        assert outputs.from_iopub(msg(kind, {})) is None
