"""How a case looks to staff: masked contacts, the AI's suggestions per head, readable audit events."""

from __future__ import annotations

import json
from datetime import tzinfo
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from hotline.access import can_see_phone
from hotline.attachments import name_of
from hotline.console.event_text import ACTION_LABELS, CHANNEL_LABELS, actor_label, describe, merged_by_label
from hotline.dispatch.deadlines import urgency_of
from hotline.errors import ApiError
from hotline.nlp.urgency import EMERGENCY, NORMAL, URGENT
from hotline.records import Case, mask_name, mask_phone, mask_pii
from hotline.status import LABELS_ZH, Status
from hotline.store import Event
from hotline.store.users import HEADS, User

URGENCY_LABELS = {EMERGENCY: "紧急", URGENT: "加急", NORMAL: "一般"}
# The levels of config/urgency.toml's rules, which a call-taker may also choose.
URGENCY_LEVELS = tuple(URGENCY_LABELS)


def suggested_urgency(case: Case) -> str:
    """The level intake's urgency rules gave the case (the AI suggestion a call-taker reviews)."""
    level = str(((case.suggestion or {}).get("urgency") or {}).get("level") or NORMAL)
    return level if level in URGENCY_LEVELS else NORMAL


MAX_ATTACHMENTS_SHOWN = 20


def attachment_views(refs: list[str]) -> list[dict[str, str]]:
    """A case's attachments for staff: our stored photos by URL, chat photos by what can be opened."""
    out = []
    for ref in refs[:MAX_ATTACHMENTS_SHOWN]:
        ref = str(ref)
        name = name_of(ref)
        if name:
            out.append({"kind": "photo", "url": f"/console/attachments/{name}", "label": "照片"})
            continue
        kind, _, query = ref.partition("?")
        if ref.startswith(("http://", "https://")):
            out.append({"kind": "link", "url": ref, "label": "附件链接"})
        elif kind == "wechat:image":
            # WeChat keeps the picture on its own servers for a few days; the link opens it there.
            pic = parse_qs(query).get("pic_url", [""])[0]
            opens = pic.startswith(("http://", "https://"))
            out.append({"kind": "link" if opens else "text", "url": pic if opens else "", "label": "微信图片"})
        elif kind == "telegram:photo":
            out.append({"kind": "text", "url": "", "label": "Telegram 图片（在 Telegram 中查看）"})
        else:
            out.append({"kind": "text", "url": "", "label": ref[:80]})
    return out


def history_rows(cases: list[Case]) -> list[dict[str, Any]]:
    """The caller's other cases as the call-taker sees them: number, when, status, the first words."""
    return [{"id": c.id, "created_at": c.created_at, "status_label": LABELS_ZH.get(c.status, str(c.status)),
             "channel_label": CHANNEL_LABELS.get(c.channel, c.channel), "text": mask_pii(c.text)[:40]}
            for c in cases]


MATCH_REASONS = {"same_place": "同一地点", "near": "位置相近（300 米内）", "far": "位置相距较远",
                 "same_caller": "同一来电人"}


def match_reasons(reasons: Any) -> str:
    """Why the matcher paired two cases, for the call-taker deciding whether to merge."""
    if not isinstance(reasons, list):
        return ""
    out = []
    for r in reasons[:6]:
        r = str(r)
        if r.startswith("text "):
            out.append(f"文字相似度 {r[5:]}")
        else:
            out.append(MATCH_REASONS.get(r, r))
    return "、".join(out)


def check_case_id(case_id: str) -> str:
    if not (8 <= len(case_id) <= 20 and set(case_id) <= set("0123456789-")):
        raise ApiError("not_found", "案件不存在。", 404)
    return case_id


def heads_of(case: Case) -> dict[str, list[dict[str, Any]]]:
    """The top 3 of each head as [{"label", "p"}], skipping malformed entries."""
    out: dict[str, list[dict[str, Any]]] = {}
    for head in HEADS:
        top = ((case.suggestion or {}).get(head) or {}).get("top") or []
        rows = []
        for item in top[:3]:
            if isinstance(item, dict) and isinstance(item.get("label"), str) and item["label"]:
                p = item.get("p", 0)
                rows.append({"label": item["label"], "p": float(p) if isinstance(p, int | float) else 0.0})
        out[head] = rows
    return out


def top_labels(case: Case) -> dict[str, str]:
    return {h: (rows[0]["label"] if rows else "") for h, rows in heads_of(case).items()}


def contact_for(user: User, case: Case) -> str:
    return case.contact if can_see_phone(user, case) else mask_phone(case.contact)


def case_view(case: Case, user: User, tz: tzinfo) -> dict[str, Any]:
    """What staff pages show of a case: text with ID/phone numbers masked, contact masked by role, times in
    ``tz`` (``intake.timezone``)."""
    urgency = (case.suggestion or {}).get("urgency") or {}
    # What the case is handled as: the call-taker's choice (人工受理 or confirmation), else the rules'.
    chosen = urgency_of(case, case.classification or {})
    chosen = chosen if chosen in URGENCY_LEVELS else NORMAL
    return {
        "id": case.id, "status": str(case.status), "status_label": LABELS_ZH.get(case.status, str(case.status)),
        "channel": case.channel, "channel_label": CHANNEL_LABELS.get(case.channel, case.channel),
        "created_at": case.created_at, "updated_at": case.updated_at,
        "text": mask_pii(case.text), "transcript": mask_pii(case.transcript), "audio_ref": case.audio_ref,
        "contact": contact_for(user, case), "name": mask_name(case.name), "address": case.address,
        "location": {"lat": case.location.lat, "lon": case.location.lon, "label": case.location.label}
        if case.location else None,
        "emergency": case.emergency, "priority": case.priority, "confidential": case.confidential,
        "urgency": {"level": str(urgency.get("level") or "normal"),
                    "label": URGENCY_LABELS.get(str(urgency.get("level") or "normal"), ""),
                    "suggested": suggested_urgency(case), "chosen": chosen, "chosen_label": URGENCY_LABELS[chosen],
                    # Cases filed before the rules had labels show the raw reasons.
                    "reasons": [str(r) for r in urgency.get("reason_labels") or urgency.get("reasons") or []][:5],
                    "advice": str(urgency.get("advice") or "")},
        "returned": case.status in (Status.RETURNED, Status.REOPENED),
        "heads": heads_of(case), "category_path": [str(x) for x in
                                                    ((case.suggestion or {}).get("category") or {}).get("path")
                                                    or []],
        "classification": case.classification, "needs_confirmation": case.needs_confirmation,
        "duplicate_of": case.duplicate_of,
        "duplicate_candidates": [{"case_id": str(d.get("case_id", "")), "score": d.get("score", 0),
                                  "reasons": d.get("reasons", []), "reason_text": match_reasons(d.get("reasons"))}
                                 for d in case.duplicate_candidates if isinstance(d, dict)],
        "reports": [{"report_id": r.report_id, "channel": r.channel, "received_at": r.received_at,
                     "contact": mask_phone(r.contact), "text": mask_pii(r.text), "merged_by": r.merged_by,
                     "merged_by_text": merged_by_label(r.merged_by), "score": r.score} for r in case.reports],
        "attachments": attachment_views(case.attachments),
        "reporter_count": case.reporter_count,
        "dispatch": case.dispatch, "dispatch_rows": dispatch_rows(case.dispatch or {}, tz),
        "deadline_at": case.deadline_at,
        "answer": case.answer, "survey": {k: v for k, v in (case.survey or {}).items() if k != "reports"},
        "snippet": mask_pii(case.text[:80]),
    }


DISPATCH_FIELDS = {"state": "派遣状态", "order_id": "工单号", "round": "派遣轮次", "backend": "派遣通道",
                   "time_limit": "办理时限类别", "dispatched_at": "派遣时间", "accepted_at": "接单时间",
                   "reply": "承办单位答复", "redo": "重办", "redo_reason": "重办原因", "return_reason": "退单原因"}


def dispatch_rows(dispatch: dict[str, Any], tz: tzinfo) -> list[tuple[str, str]]:
    """The dispatch record as (label, value) rows for people: known fields only, times as local times."""
    from hotline.pages import format_ts

    rows = []
    for key, label in DISPATCH_FIELDS.items():
        value = dispatch.get(key)
        if value in (None, "", 0, 0.0, False, -1):
            continue
        if key.endswith("_at") and isinstance(value, int | float):
            value = format_ts(float(value), tz)
        elif value is True:
            value = "是"
        rows.append((label, mask_pii(str(value))[:500]))
    return rows


def event_view(ev: Event, tz: tzinfo) -> dict[str, Any]:
    data = json.dumps(ev.data, ensure_ascii=False) if ev.data else ""
    return {"id": ev.id, "ts": ev.ts, "actor": ev.actor, "actor_label": actor_label(ev.actor),
            "action": ev.action, "action_label": ACTION_LABELS.get(ev.action, ev.action),
            "data": mask_pii(data)[:600], "details": mask_pii(describe(ev.data, tz))}


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False),
                             headers={"Cache-Control": "no-store"})
