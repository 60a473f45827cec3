"""Place names in complaint text (小区, 路/街/道, 村, 学校, 公司 …) and distances between coordinates.

Pure computation. A place is reduced to its *core*: the name part before the generic suffix, so
"丽发新城小区", "丽发新城社区" and "丽发新城附近" all meet on "丽发新城" and "星沙派1栋" meets "星沙派小区".
"""

from __future__ import annotations

import math
import re
import unicodedata

# Generic suffixes that end a place name; longer ones first so 小区 wins over 区.
SUFFIXES = (
    "幼儿园", "有限公司", "分公司", "小区", "花园", "家园", "公寓", "大厦", "广场", "新城", "新村", "山庄", "华府",
    "社区", "街道", "大街", "大道", "小学", "中学", "学校", "学院", "大学", "医院", "公司", "市场", "公园", "车站",
    "集团", "中心", "项目", "工地", "物业", "影院", "酒店", "商场", "驾校", "苑", "园", "府", "郡", "路", "街", "村",
    "站", "店", "馆", "厂", "栋", "湾",
)
_SUFFIX_RE = "|".join(sorted(SUFFIXES, key=len, reverse=True))
# 2-6 name characters followed by a suffix; the name part is trimmed of leading function words below.
_PLACE = re.compile(rf"([\u4e00-\u9fa5A-Za-z0-9]{{2,8}}?)(?:{_SUFFIX_RE})")
_MASK = re.compile(r"[*＊]{2,}|0{4,}|[xX×]{2,}|某某")
# Anonymised administrative names of the open data (A市, A3区) and plain admin words carry no place.
_ADMIN = re.compile(r"[A-Z]\d{0,2}(?=[市区县镇])")
# Characters that start a clause rather than a name: "我是金山花园业主" → 金山花园.
_LEAD = re.compile(
    r"^.*?(?:我是|位于|住在|家住|请问|关于|反映|投诉|举报|建议|咨询|在|的|到|给|于|对|向|从|是|和|与|及|、)"
)
_GENERIC = frozenset({
    "我们", "你们", "他们", "这个", "那个", "附近", "周边", "一个", "什么", "相关", "有关", "本人", "业主", "政府",
    "该", "本", "此", "这", "那", "市", "区", "县", "镇", "省", "小区", "居民", "全市", "各个", "所在", "一家", "这家",
    "那家", "多个", "每个", "整个", "其他", "以及", "我家", "我市", "我区", "新",
})
_ADMIN_TAIL = re.compile(r"^(?:[\u4e00-\u9fa5]{0,3}?[省市区县镇乡])(?=[\u4e00-\u9fa5]{2,})")
_TRAIL_NUM = re.compile(r"[\dA-Za-z\-]+$")
# Words that end a company or estate name without naming it: "深圳华业物业管理有限公司" → 深圳华业.
_GENERIC_TAIL = re.compile(
    r"(?:物业管理|房地产开发|经营管理|物业服务|物业|管理|有限|服务|置业|开发|投资|前期|股份|科技)+$"
)
# A core holding one of these characters is a clause fragment ("目前我们", "回复称该"), not a name. Characters
# that also occur in names (丽都, 太阳城, 能源, 会展) are left out.
_CLAUSE_CHARS = frozenset("我你他她们的了是这那该其此请让就也还要把被说已没不很")
_NUM_ONLY = re.compile(r"^[\dA-Za-z]+$")


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "")
    text = _MASK.sub(" ", text)
    return _ADMIN.sub("", text)


def place_cores(text: str, limit: int = 12) -> list[str]:
    """Distinct place cores in order of appearance, at most ``limit``."""
    out: list[str] = []
    for match in _PLACE.finditer(_clean(text)):
        name = _LEAD.sub("", match.group(1))
        # "甘井子区中华城" → "中华城": the admin prefix is shared by every place in that district.
        for _ in range(3):
            shorter = _ADMIN_TAIL.sub("", name)
            if shorter == name:
                break
            name = shorter
        # "星沙派1栋" → "星沙派": building and unit numbers differ between reports of one place.
        name = _GENERIC_TAIL.sub("", _TRAIL_NUM.sub("", name))[-5:]
        # "人民政府", "市政府": 府 ends a government, not an estate.
        if match.group(0).endswith("政府") or name.endswith("政"):
            continue
        if len(name) < 2 or name in _GENERIC or _NUM_ONLY.match(name) or _CLAUSE_CHARS.intersection(name):
            continue
        if name not in out:
            out.append(name)
            if len(out) >= limit:
                break
    return out


def shared_places(a_cores: list[str], a_text: str, b_cores: list[str], b_text: str) -> list[str]:
    """Cores of one text that occur anywhere in the other (so 星沙派小区 meets 星沙派1栋)."""
    hits = [c for c in a_cores if c in b_text]
    hits += [c for c in b_cores if c in a_text and c not in hits]
    return hits


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine)."""
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(h)))
