"""Staff wording of a case's audit trail: who, what, and the details as one readable line.

Events keep machine data (ids, codes, epoch times) because the trail is also an API; a call-taker reading
the case page needs "派遣轮次：2；承办部门：住建局；办理期限：2026-11-25 14:00" instead of JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from hotline.pages import format_ts
from hotline.status import LABELS_ZH, Status

CHANNEL_LABELS = {"web": "网站", "api": "接口", "wechat": "微信", "telegram": "Telegram", "voice": "电话",
                  "open311": "Open311"}

# Unknown actions are shown as they are: a new event type is still visible, just not translated.
ACTION_LABELS = {
    "received": "受理", "classified": "AI 分类", "confirmed": "人工确认", "dispatched": "派遣",
    "accepted": "承办单位接单", "in_progress": "处理中", "returned": "退单", "resolved": "办结反馈",
    "closed": "结案", "reopened": "重办", "merged": "并入其他案件", "report_merged": "并入重复诉求",
    "unmerged": "撤销合并", "reports_moved": "重复诉求随案并入", "report_moved": "改挂至合并后的案件",
    "duplicate_rejected": "否认重复", "ai_reviewed": "AI 建议审核",
    "phone_viewed": "查看完整电话", "answered": "直接答复", "survey_answered": "回访评价",
    "notified": "通知市民", "suggested": "AI 建议更新",
    "extension_requested": "申请延期", "extension_approved": "同意延期", "extension_refused": "不同意延期",
    "overdue": "超期提醒", "order_delivered": "工单已送达派单系统",
    "order_failed": "工单投递失败", "order_redriven": "工单重新投递", "dispatch_event_ignored": "忽略派单系统事件",
    "survey_scheduled": "安排回访", "survey_followup": "转人工回访", "callback_call": "人工回访电话",
    "survey_call": "自动回访电话", "survey_call_placed": "拨出回访电话", "survey_withdrawn": "取消回访",
    "answer_resolved": "市民确认答复已解决", "answer_not_resolved": "市民表示答复未解决",
    "hotspot_raised": "列入热点", "hotspot_closed": "热点结束", "open311_service": "Open311 服务类型",
    "voice_call": "来电记录", "ivr_answer_offered": "电话中提供答复", "ivr_answer_online": "答复留待网上查询",
    "ivr_answer_requested": "市民要求短信答复", "personal_data_purged": "清除个人信息（超过保存期限）",
    "urgency_set": "接线员设定紧急程度",
}

ACTOR_NAMES = {"voice:ivr": "电话 IVR", "voice:survey": "自动回访电话", "dispatch:forwarder": "工单投递",
               "dispatch:recover": "派单系统（补记）", "open311:client": "Open311 应用",
               "system:retention": "系统（保存期限）"}
ACTOR_KINDS = {"voice": "电话系统", "dispatch": "派单系统", "open311": "Open311 应用", "wechat": "微信",
               "telegram": "Telegram", "web": "网站", "api": "接口"}

KEY_LABELS = {
    "channel": "渠道", "received_at": "收到时间", "taken_by": "登记人", "model": "模型",
    "needs_confirmation": "需人工确认",
    "from": "原状态", "to": "新状态", "status": "状态", "into": "并入案件", "score": "相似度",
    "merged_by": "合并方式", "report_id": "反映记录", "reporters": "反映人数", "repeat": "同一市民重复反映",
    "candidate": "疑似重复案件", "from_case": "原案件", "reason": "原因", "order_id": "工单号",
    "round": "派遣轮次", "category": "类别", "category_path": "分类路径", "department": "承办部门",
    "co_departments": "协办部门", "street": "街道", "type": "类型", "time_limit": "办理时限",
    "deadline_at": "办理期限", "redo": "重办", "ref": "对方编号", "backend": "派单系统", "error": "错误",
    "attempts": "尝试次数", "event_id": "事件编号", "source": "来源", "reply": "答复", "hours": "延期小时数",
    "note": "备注", "entry_id": "知识条目", "date": "日期", "answer": "答复内容", "kind": "通知类型",
    "delivered": "已送达", "classification": "确认结果", "accepted": "采纳 AI 建议", "changed": "修改项",
    "hotspot": "热点", "place": "地点", "call_id": "通话编号", "adapter": "接入方式", "intent": "来电意图",
    "confidence": "识别置信度", "duration_s": "时长", "words": "识别词数", "emergency_word": "紧急词",
    "hung_up": "市民挂断", "audio_ref": "录音", "outcome": "结果", "answers": "按键回答", "state": "状态",
    "resolved": "问题已解决", "satisfaction": "满意度", "comment": "意见", "due_at": "计划时间",
    "recipients": "回访人数", "service_code": "服务代码", "choice": "市民选择", "by": "方式",
    "call_back_at": "约定回拨时间", "photos": "照片", "recording": "通话录音", "reports": "合并反映",
    "suggested": "AI 建议", "chosen": "采用", "with_reports": "随案并入的反映", "urgency": "紧急程度",
    "requested_hours": "申请延期小时数", "previous_deadline_at": "原办理期限", "extensions": "累计延期次数",
    "replaces": "替换此前的申请",
}

HEAD_LABELS = {"category": "类别", "department": "承办部门", "type": "诉求类型", "urgency": "紧急程度"}
# Urgency levels (config/urgency.toml), wherever a level is a value: the AI's, the call-taker's, the case's.
_URGENCY = {"emergency": "紧急", "urgent": "加急", "normal": "一般"}
_TIME_LIMITS = {"urgent": "紧急", "utilities": "水电气热", "consultation": "咨询", "default": "一般"}
_VALUES: dict[str, dict[str, str]] = {
    "outcome": {"answered": "已回答", "hung_up": "中途挂断", "unanswered": "未回答", "no_answer": "无人接听",
                "timeout": "超时", "bad_number": "号码无效", "ari_error": "呼叫失败", "wrong_number": "号码错误",
                "call_back_later": "稍后回拨"},
    "choice": {"text": "短信答复", "call_taker": "转接线员", "register": "登记诉求", "none": "未选择"},
    "intent": {"consult": "咨询", "complaint": "反映问题", "query": "查询进度", "transfer": "转人工"},
    "by": {"survey": "回访", "unreachable": "回访联系不上"},
    "reason": {"needs_call": "需人工电话回访", "send_failed": "短信发送失败", "no_caller_number": "无来电号码",
               "no_channel_notifier": "该渠道无法通知", "unmerged": "已撤销合并",
               "reopened": "案件已重办，本轮回访结束"},
    "type": {"accepted": "接单", "in_progress": "处理中", "resolved": "办结", "returned": "退单",
             "extension_requested": "申请延期"},
    "kind": {"received": "受理", "dispatched": "派遣", "resolved": "办结", "reopened": "重办", "survey": "回访",
             "answer": "答复", "extension": "延期"},
    "time_limit": _TIME_LIMITS,
    "changed": HEAD_LABELS,
    "urgency": _URGENCY, "suggested": _URGENCY, "chosen": _URGENCY,
}
MAX_VALUE_CHARS = 120
MAX_LIST_ITEMS = 10
MAX_DETAILS_CHARS = 600


def _status(value: Any) -> str:
    try:
        return LABELS_ZH.get(Status(str(value)), str(value))
    except ValueError:
        return str(value)


def merged_by_label(value: Any) -> str:
    # Dedup writes "auto" for its own merges and the deciding actor (staff:<name>) for a call-taker's.
    return "系统自动" if value == "auto" else actor_label(str(value))


def _seconds(value: Any) -> str:
    return f"{float(value):.0f} 秒" if isinstance(value, int | float) else str(value)


def _ratio(value: Any) -> str:
    return f"{float(value):.2f}" if isinstance(value, int | float) else str(value)


_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "from": _status, "to": _status, "status": _status, "duration_s": _seconds,
    "score": _ratio, "confidence": _ratio, "merged_by": merged_by_label,
    "channel": lambda v: CHANNEL_LABELS.get(str(v), str(v)),
}


def _value(key: str, value: Any, tz: tzinfo, depth: int = 0) -> str:
    if isinstance(value, bool):
        return "是" if value else "否"
    if key in _FORMATTERS:
        return _FORMATTERS[key](value)
    if isinstance(value, int | float) and (key.endswith("_at") or key == "at"):
        return format_ts(float(value), tz) if value > 0 else ""
    if isinstance(value, list):
        parts = [_value(key, v, tz, depth + 1) for v in value[:MAX_LIST_ITEMS]]
        more = f" 等 {len(value)} 项" if len(value) > MAX_LIST_ITEMS else ""
        return "、".join(p for p in parts if p) + more
    if isinstance(value, dict):
        return "，".join(_pairs(value, tz, depth + 1)) if depth < 2 else ""
    text = str(value)
    text = _VALUES.get(key, {}).get(text, text)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def _pairs(data: dict[str, Any], tz: tzinfo, depth: int = 0) -> list[str]:
    out = []
    for key, value in data.items():
        if value is None or value == "" or value == [] or value == {}:
            continue  # an empty field says nothing to a reader
        shown = _value(str(key), value, tz, depth)
        if shown:
            label = KEY_LABELS.get(str(key), str(key))
            out.append(f"{label}（{shown}）" if isinstance(value, dict) else f"{label}：{shown}")
    return out


def describe(data: dict[str, Any], tz: tzinfo) -> str:
    """The event's data as "标签：值；标签：值" for staff, times in ``tz``; raw keys and values where there is no
    wording."""
    text = "；".join(_pairs(data, tz)) if isinstance(data, dict) else ""
    return text if len(text) <= MAX_DETAILS_CHARS else text[:MAX_DETAILS_CHARS] + "…"


def actor_label(actor: str) -> str:
    kind, _, who = actor.partition(":")
    if kind == "staff":
        return f"{who}（工作人员）"
    if actor == "system":
        return "系统"
    if who == "citizen":
        return f"市民（{CHANNEL_LABELS.get(kind, kind)}）"
    if actor in ACTOR_NAMES:
        return ACTOR_NAMES[actor]
    if kind in ACTOR_KINDS:
        return f"{ACTOR_KINDS[kind]}（{who}）" if who else ACTOR_KINDS[kind]
    return actor
