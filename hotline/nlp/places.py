"""Place names in complaint text (小区, 路/街/道, 村, 学校, 公司 …) and distances between coordinates.

Pure computation (files only when a table is read or written on request). A place is reduced to its *core*:
the name part before the generic suffix, so "丽发新城小区", "丽发新城社区" and "丽发新城附近" all meet on
"丽发" and "星沙派1栋" meets "星沙派小区". Cores that the city's letters mostly use as ordinary words
(``plain_words``) are left out.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

from hotline.nlp.tables import write_table
from hotline.nlp.text import nfkc

# Generic suffixes that end a place name; longer ones first so 小区 wins over 区.
SUFFIXES = (
    "幼儿园", "有限公司", "分公司", "小区", "花园", "家园", "公寓", "大厦", "广场", "新城", "新村", "山庄", "华府",
    "社区", "街道", "大街", "大道", "小学", "中学", "学校", "学院", "大学", "医院", "公司", "市场", "公园", "车站",
    "集团", "中心", "项目", "工地", "物业", "影院", "酒店", "商场", "驾校", "苑", "园", "府", "郡", "路", "街", "村",
    "站", "店", "馆", "厂", "栋", "湾",
)
_SUFFIX_RE = "|".join(sorted(SUFFIXES, key=len, reverse=True))
# 2-6 name characters followed by a suffix; the name part is trimmed of leading function words below.
# The lookahead on the suffixes' first characters is only a shortcut: most positions fail there at once
# instead of trying every suffix.
_SUFFIX_FIRST = "".join(sorted({s[0] for s in SUFFIXES}))
_PLACE = re.compile(rf"([\u4e00-\u9fa5A-Za-z0-9]{{2,8}}?)(?=[{_SUFFIX_FIRST}])(?:{_SUFFIX_RE})")
_MASK = re.compile(r"[*＊]{2,}|0{4,}|[xX×]{2,}|某某")
# Anonymised administrative names of the open data (A市, A3区) and plain admin words carry no place.
_ADMIN = re.compile(r"[A-Z]\d{0,2}[市区县镇]")
# Characters that start a clause rather than a name: "我是金山花园业主" → 金山花园.
_LEAD_WORDS = (
    "我是|位于|住在|家住|请问|关于|反映|投诉|举报|建议|咨询|因为|由于|导致|造成|而且|并且|然而|所以|如果|目前|现在|"
    "当时|之前|今年|根据|按照|通过|作为|为什么|为何|难道|未经|严重影响|影响|扰乱|增加|附近|周边|督促|要求|经过|进入|"
    "期间|所有|倡导|楼下|楼上|门口|对面|旁边|隔壁|路边|街边"
)
_LEAD = re.compile(rf"^.*?(?:{_LEAD_WORDS}|在|的|到|给|于|对|向|从|是|和|与|及|、)")
# After the first cut only whole clause words go: single characters like 和 also occur inside names (润和紫郡).
_LEAD_AGAIN = re.compile(rf"^.*?(?:{_LEAD_WORDS})")
_TRAIL_CLAUSE = re.compile(r"[和与及的在]+$")
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
# A number names no place. "3期", "五号楼", "A区", "七队", "2013年", "2000多" are the phase, building or group
# of *some* estate, a date or a count, so 竹韵小区3期 and 玫瑰苑3期 must not meet on "3期"; digits or letters
# alone ("15", "KTV") are no name either. The units are the words a count or an address number takes; 家, 台,
# 方, 平 and 点 are left out because they follow a numeral in names too (万家, 九台, 四方, 四平, 一点点).
_DIGITS = "0-9A-Za-z零〇一二三四五六七八九十百千万两"
_UNITS = ("单元|小时|平米|平方|期|区|号|栋|幢|座|楼|层|组|队|社|排|户|室|门|段|巷|弄|条|元|块|米|吨|个|次|天|年|月|"
          "日|时|分|秒|人|位|名|辆|间|套|处|届|周|岁|项|件|批|亩")
_NUMBER = re.compile(rf"(?:[{_DIGITS}第几多余]|{_UNITS})+")
# 百, 千 and 万 alone make no number: they begin names (万年路, 百户村, 千佛寺) as often as they count; with
# another numeral or 几 they do (二百户, 几百米).
_HAS_DIGIT = re.compile(r"[0-9A-Za-z零〇一二三四五六七八九十两几]")
# A bare Chinese number or ordinal ("二十", "五四", "第七") keeps its suffix instead, like an everyday word: with
# it, it is a name (二十中学, 五四广场, 八一路).
_BARE_NUMBER = re.compile("第?[零〇一二三四五六七八九十百千两]+")
# Names that say what kind of place it is, not which one ("烧烤店", "垃圾站", "民办学校", "高速公路"): two
# reports naming one of these are not thereby at the same place.
_KIND_ONLY = frozenset({
    "公交", "公交线", "公交车", "自来水", "垃圾", "供热", "供暖", "燃气", "烧烤", "麻将", "加油", "搅拌", "水泥",
    "餐饮", "物流", "社保", "卫生", "住宅", "安置", "配套", "改造", "商业", "人才", "收费", "幼儿", "民办", "公办",
    "公立", "私立", "市区", "城区", "区区", "客运", "高铁", "地铁", "火车", "汽车", "步行", "人行", "快速", "城市",
    "高速公", "城市道", "城际铁", "铁", "断头", "必经之", "走投无", "同一", "当地", "新建", "哪个",
    "全体", "部分", "附近搅拌", "棚改", "小产权", "商品房", "回迁", "廉租", "公租", "保障", "培训", "辅导",
    "施工", "夜宵", "游泳", "移动", "公积金", "住房公积金", "房地产", "乡镇", "起点", "市长", "进出", "十字", "交叉",
    "过马", "建筑", "开发商", "以人民为", "同一个", "城中", "群众", "棚户区改造",
    "在建搅拌", "建搅拌",
})
# Suffixes after an everyday word that still name no particular place ("建设项目", "科技公司").
_KIND_SUFFIXES = ("项目", "工地", "公司", "有限公司", "分公司", "集团", "物业")
# Names that are also everyday words (人民, 建设, 解放): as a bare core they would be "found" in any text
# using the word, so the core keeps its suffix ("人民路" does not meet "人民医院" or "人民群众"). Bare numbers
# (八一, 第一) are treated alike by ``_BARE_NUMBER``.
_COMMON_WORDS = frozenset({
    "人民", "建设", "解放", "胜利", "友谊", "中山", "红旗", "和平", "新华", "朝阳", "光明", "文化", "体育", "图书",
    "博物", "中心", "实验", "东方", "北方", "南方", "希望", "劳动", "合作", "国际", "江南", "长安", "中华", "美丽",
    "幸福", "阳光", "金融", "工业", "教育", "儿童", "附属", "中南", "中医", "口腔", "妇幼", "农贸", "科技", "开发",
    "政务", "职业", "技术", "师范", "民族", "青年", "老年",
})


def _numbered(name: str) -> bool:
    """Nothing but a number, with or without units ("3期", "五号楼", "A区", "15"), and not a bare Chinese one."""
    return bool(_NUMBER.fullmatch(name) and _HAS_DIGIT.search(name) and not _BARE_NUMBER.fullmatch(name))


def _clean(text: str) -> str:
    text = nfkc(text or "")
    text = _MASK.sub(" ", text)
    return _ADMIN.sub("", text)


def place_cores(text: str, limit: int = 12, plain: Collection[str] = frozenset()) -> list[str]:
    """Distinct place cores in order of appearance, at most ``limit``. ``plain``: cores the city's letters
    mostly use as ordinary words (``plain_words``), which name no place."""
    out: list[str] = []
    for match in _PLACE.finditer(_clean(text)):
        # Clause words can follow one another ("到现在学校", "难道开发商和物业"): strip them all.
        name = _LEAD.sub("", match.group(1))
        for _ in range(3):
            shorter = _LEAD_AGAIN.sub("", name)
            if shorter == name:
                break
            name = shorter
        name = _TRAIL_CLAUSE.sub("", name)
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
        if (len(name) < 2 or name in _GENERIC or name in _KIND_ONLY or _CLAUSE_CHARS.intersection(name)
                or _numbered(name)):
            continue
        if name in _COMMON_WORDS or _BARE_NUMBER.fullmatch(name):
            suffix = match.group(0)[len(match.group(1)):]
            # "二十栋" is a building number again.
            if suffix in _KIND_SUFFIXES or _numbered(name + suffix):
                continue
            name += suffix
        if name not in out and name not in plain:
            out.append(name)
            if len(out) >= limit:
                break
    return out


def plain_words(texts: Sequence[str], *, max_share: float = 0.1, min_docs: int = 10,
                ) -> dict[str, tuple[int, int]]:
    """Cores that ``texts`` mostly use without a place suffix: {core: (letters naming it as a place,
    letters holding it at all)}, for cores held by at least ``min_docs`` letters and named as a place in
    fewer than ``max_share`` of them.

    The suffix rules cannot tell "公布物业收支" or "选聘物业" from "丽发物业", nor a city's own name
    ("大连开发区") from an estate's; a city's letters can. A real estate, road or company name mostly comes
    with its suffix (丽发新城, 友谊路: over 80 % of the letters naming it), a verb, a plain noun or the
    city's name almost never (公布 1 of 161 letters, 大连 45 of 1,124). A core the letters hold too rarely is kept:
    a new estate has no history.
    """
    named: Counter[str] = Counter()
    for text in texts:
        named.update(place_cores(text, limit=1_000))
    held: Counter[str] = Counter()
    longest = max(map(len, named), default=0)
    for text in texts:
        cleaned = _clean(text)
        found = {cleaned[i:i + n] for n in range(2, longest + 1) for i in range(len(cleaned) - n + 1)}
        held.update(found.intersection(named))
    return {core: (named[core], held[core]) for core in sorted(named)
            if held[core] >= min_docs and named[core] < max_share * held[core]}


def write_plain_words(path: Path, n_docs: int, table: dict[str, tuple[int, int]]) -> None:
    """Format: ``#docs<TAB>N``, then ``word<TAB>letters naming it as a place<TAB>letters holding it``; written
    whole or not at all."""
    write_table(path, [f"#docs\t{n_docs}\n", *(f"{word}\t{named}\t{held}\n" for word, (named, held) in
                                             sorted(table.items(), key=lambda kv: (-kv[1][1], kv[0])))])


def read_plain_words(path: Path) -> frozenset[str]:
    """The words of a ``write_plain_words`` table; ValueError names the first line that is not one."""
    words: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip() or fields[0] == "#docs":
                continue
            if len(fields) != 3 or not fields[0] or not (fields[1].isdigit() and fields[2].isdigit()):
                raise ValueError(f"{path}:{n}: expected word<TAB>count<TAB>count")
            words.add(fields[0])
    return frozenset(words)


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
