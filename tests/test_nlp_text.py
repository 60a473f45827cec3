"""Cleaning and tokenising edge cases of real citizen text."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hotline.nlp.clean import MAX_MODEL_CHARS, for_model, to_simplified
from hotline.nlp.model import FeatureConfig, char_ngrams, features
from hotline.nlp.suggest import TextPipeline
from hotline.nlp.text import normalize, sanitize
from hotline.nlp.tokenize import Tokenizer

USERDICT = Path(__file__).resolve().parent.parent / "config" / "userdict.txt"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(USERDICT)


def test_empty_and_blank_text() -> None:
    assert for_model("") == ""
    assert for_model("   \n\t\u3000 ") == ""
    assert sanitize("") == "" and normalize("") == ""


def test_anonymisation_runs_urls_and_admin_names_are_removed() -> None:
    text = "A市A3区幸福小区*****号，电话000000，详见 https://example.com/a?b=1 或 www.x.cn，XX先生"
    out = for_model(text)
    assert "*" not in out and "000000" not in out and "http" not in out and "www" not in out
    assert "xx" not in out and "a3" not in out
    assert "幸福小区" in out and "市" in out


def test_full_width_control_characters_and_case() -> None:
    out = for_model("ＡＢＣ１２３\x00\x07小区\u200b噪音\r\n\r\n\r\n\r\n扰民")
    assert out.startswith("abc123")
    assert "\x00" not in out and "\x07" not in out and "\u200b" not in out
    assert "小区噪音" in out


def test_traditional_to_simplified() -> None:
    assert to_simplified("小區停電，電話問題") == "小区停电，电话问题"
    assert for_model("噪聲擾民") == "噪声扰民"


def test_ten_thousand_characters_are_bounded_in_length_and_time(tokenizer: Tokenizer) -> None:
    pipeline = TextPipeline(tokenizer)
    text = "小区物业乱收费，楼道堆满垃圾。" * 700  # 10,500 characters
    started = time.perf_counter()
    doc = pipeline.doc("", text)
    elapsed = time.perf_counter() - started
    assert len(doc.body) <= MAX_MODEL_CHARS
    assert doc.words and "物业" in doc.words
    assert elapsed < 0.5, elapsed


def test_emoji_and_mixed_scripts(tokenizer: Tokenizer) -> None:
    text = "😡😡小区WiFi坏了🙏 help!!! 정말 Москва 12345热线"
    cleaned = for_model(text)
    words = tokenizer.words(cleaned)
    assert "😡" not in "".join(words)
    assert "小区" in words and "wifi" in words and "12345" in words
    # Only CJK, latin letters and digits become n-grams; emoji and other scripts are dropped, not crashed on.
    grams = char_ngrams(cleaned, 1, 3)
    assert "小" in grams and "小区" in grams and all("😡" not in g for g in grams)


def test_user_dictionary_keeps_hotline_terms_whole(tokenizer: Tokenizer) -> None:
    words = tokenizer.words("小区噪音扰民，占道经营，拖欠工资，燃气泄漏")
    for term in ("小区", "噪音扰民", "占道经营", "拖欠工资", "燃气泄漏"):
        assert term in words, words
    # Without the user dictionary jieba splits at least one of them.
    plain = Tokenizer(None).words("小区噪音扰民，占道经营，拖欠工资")
    assert not {"噪音扰民", "占道经营", "拖欠工资"} <= set(plain)


SENTENCES = [
    "小区物业乱收停车费，业主不同意还被保安拦着不让进",
    "我是东风区水源小区的回迁户，大约4-5年了，问一下啥时候能给我们开发货票，然后才能办理房照？",
    "公司拖欠农民工工资三个月，劳动仲裁后仍不执行",
    "楼下烧烤店油烟很大，晚上噪音扰民到凌晨两点，12345打了好几次",
    "ABC公司的WiFi坏了2次",
]


def test_fast_engine_gives_jieba_tokens(tokenizer: Tokenizer) -> None:
    reference = Tokenizer(USERDICT, engine="jieba")
    assert reference.engine == "jieba" and tokenizer.engine == "rjieba"
    for text in SENTENCES:
        cleaned = for_model(text)
        assert tokenizer.words(cleaned) == reference.words(cleaned), text


def test_userdict_format_and_engine_choice(tmp_path: Path) -> None:
    userdict = tmp_path / "dict.txt"
    userdict.write_text("# comment\n噪音扰民 20000 v\n占道经营\n拖欠工资 n\n\n", encoding="utf-8")
    for engine in ("rjieba", "jieba"):
        words = Tokenizer(userdict, engine=engine).words("噪音扰民和占道经营还有拖欠工资")
        assert {"噪音扰民", "占道经营", "拖欠工资"} <= set(words), (engine, words)
    with pytest.raises(ValueError):
        Tokenizer(userdict, engine="thulac")


def test_punctuation_only_gives_no_words(tokenizer: Tokenizer) -> None:
    assert tokenizer.words("，。！？……——") == []
    assert tokenizer.words("") == []


def test_pre_segmented_rows_use_their_tokens(tokenizer: Tokenizer) -> None:
    pipeline = TextPipeline(tokenizer)
    doc = pipeline.doc_from_row({"tokens": "小区 物业 乱收费 ！", "label1": "城乡建设"})
    assert doc.words == ["小区", "物业", "乱收费"]
    assert doc.body == "小区物业乱收费"
    feats = features(doc, FeatureConfig())
    assert "w:物业" in feats and "b:小区_物业" in feats and "区物业" in feats
