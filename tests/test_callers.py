"""Caller hashes: one citizen's cases are linked by phone number or chat id, never by a placeholder."""

from __future__ import annotations

from hotline.callers import caller_keys, phone_key
from hotline.records import Case
from hotline.status import Status


def _case(channel: str, sender: str, contact: str = "") -> Case:
    return Case(id="20261124-000001", channel=channel, sender=sender, status=Status.CLASSIFIED, created_at=1.0,
                updated_at=1.0, text="路灯坏了", normalized_text="路灯坏了", contact=contact)


def test_a_phone_number_links_in_any_notation() -> None:
    assert phone_key("137-0000-7777") == phone_key("+86 13700007777"[3:]) == phone_key("13700007777")
    assert phone_key("") == phone_key("12") == ""
    assert caller_keys(_case("voice", "13700007777", "13700007777"))[0] == phone_key("13700007777")


def test_chat_ids_link_but_anonymous_senders_do_not() -> None:
    assert len(caller_keys(_case("telegram", "tg:42"))) == 1
    assert caller_keys(_case("telegram", "tg:42")) != caller_keys(_case("wechat", "tg:42"))
    # A call without caller id, a web form, a client address: nobody in particular.
    for channel, sender in [("voice", "unknown"), ("voice", ""), ("web", "web"), ("web", "web:ab12")]:
        assert caller_keys(_case(channel, sender)) == [], (channel, sender)
