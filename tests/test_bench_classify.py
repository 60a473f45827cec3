"""bench/classify.py runs on the shipped models, including its per-step breakdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_breakdown_times_every_step_of_a_suggestion(tmp_path: Path) -> None:
    data = tmp_path / "letters.jsonl"
    text = "楼下烧烤店每天营业到凌晨两点，油烟和噪音严重影响休息"
    data.write_text("".join(json.dumps({"title": f"小区噪音扰民{i}", "text": text}, ensure_ascii=False) + "\n"
                            for i in range(40)), encoding="utf-8")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "classify.py"), "--data", str(data), "--n", "40",
                          "--cpu", "-1", "--breakdown", "--json"], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] == 40 and result["heads"] == ["category", "department", "type"]
    assert set(result["steps"]) == {"clean", "segment", "features", "heads", "taxonomy", "urgency_policy"}
    for step in result["steps"].values():
        assert 0 <= step["p50_ms"] <= step["p99_ms"]
    assert result["steps"]["features"]["p50_ms"] > 0 and result["steps"]["heads"]["p50_ms"] > 0
