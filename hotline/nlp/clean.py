"""Cleaning citizen text before it is classified.

Real letters carry things that say nothing about the problem but make unrelated letters look alike:
anonymisation runs (``*****``, ``000000``, ``XX``), the anonymised admin names of open data (``A市``,
``A3区``), URLs, full-width letters, traditional characters, control characters. ``for_model`` removes
them and cuts the text to a bounded length so that classifying a 10,000-character letter costs the same
as a long ordinary one (the problem is stated early in a letter).
"""

from __future__ import annotations

import re

from hotline.nlp.text import normalize

# Longest text the models look at (characters after cleaning); chosen by cross-validation
# (README: Complaint understanding).
MAX_MODEL_CHARS = 600

# Each pattern starts with a one-character test (a lookahead class of the possible first characters, or
# the letter before the lookbehind) so that the regex engine skips most positions of a long letter at
# once: 1.5 to 4 times faster than the plain forms (kept in tests/test_nlp_fastpath.py, which checks
# that both give the same result).
_URL = re.compile(r"(?=[hHfFwW])(?:https?://|ftp://|www\.)[^\s\u4e00-\u9fff]*", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_MASK = re.compile(r"(?=[*＊0xX×某])(?:[*＊]{2,}|0{5,}|[xX×]{2,}|某某)")
_ADMIN = re.compile(r"[A-Z](?<![A-Za-z][A-Z])\d{0,2}(?=[市区县镇乡])")
_SPACE = re.compile(r"\s+")

# Traditional → simplified for the characters that occur in citizen letters: a fixed table is enough for
# classification (rare characters only cost a feature) and costs one str.translate.
_TRAD = (
    "區電話號問題處們這來時發業學車醫環報費務會證過還運動開關門間長與為應對樣點後說機產權訴願"
    "從進們區級縣鄉鎮區場廠戶線網絡讓認識請謝聯繫係辦約總現實際單據擁擠衛導師資歲齡愛護療藥購買賣貨"
    "價錢銀幣險補貼貸燈滅燒氣熱暖溫灣層樓邊隊鐵鋼廣東華夏麗藝術圖書館爭訟勞動傷殘親戚婦兒園歡樂"
    "垃圾與汙染噪聲響頭體檢測驗設備維修遷徙幾鐘錯誤變壞亂擾嚴重損壞違規佔據經營攤販執紀監察聽說職員"
    "協議選擇標準屬於無須雖然斷斷續續給張李陳劉楊黃趙吳周鄭孫馬羅謝韓馮鄧蕭許曾蔣葉蘇盧魏顧歐陽"
)
_SIMP = (
    "区电话号问题处们这来时发业学车医环报费务会证过还运动开关门间长与为应对样点后说机产权诉愿"
    "从进们区级县乡镇区场厂户线网络让认识请谢联系系办约总现实际单据拥挤卫导师资岁龄爱护疗药购买卖货"
    "价钱银币险补贴贷灯灭烧气热暖温湾层楼边队铁钢广东华夏丽艺术图书馆争讼劳动伤残亲戚妇儿园欢乐"
    "垃圾与污染噪声响头体检测验设备维修迁徙几钟错误变坏乱扰严重损坏违规占据经营摊贩执纪监察听说职员"
    "协议选择标准属于无须虽然断断续续给张李陈刘杨黄赵吴周郑孙马罗谢韩冯邓萧许曾蒋叶苏卢魏顾欧阳"
)
assert len(_TRAD) == len(_SIMP)
_T2S = {ord(t): s for t, s in zip(_TRAD, _SIMP, strict=True) if t != s}
# Most letters hold no traditional character: one character-class scan is five times cheaper than the
# per-character ``translate`` it saves.
_HAS_TRAD = re.compile("[" + "".join(sorted({chr(c) for c in _T2S})) + "]")


def to_simplified(text: str) -> str:
    return text.translate(_T2S) if _HAS_TRAD.search(text) else text


def for_model(text: str, max_chars: int = MAX_MODEL_CHARS) -> str:
    """Text as the models see it: normalised, simplified, lower-case, artefacts removed, bounded length."""
    # Cut before the regexes so that a huge letter costs no more than a long one.
    text = normalize(text[: max_chars * 3])
    text = to_simplified(text)
    text = _URL.sub(" ", text)
    if "@" in text:  # the e-mail pattern is slow on long CJK runs (\w matches them) and needs an @
        text = _EMAIL.sub(" ", text)
    text = _MASK.sub(" ", text)
    text = _ADMIN.sub("", text)
    text = _SPACE.sub(" ", text).strip().lower()
    return text[:max_chars]
