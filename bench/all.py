"""Run every benchmark in bench/ and write their results as a table into README.md.

Each benchmark prints one JSON object as its last line; this script collects them, prints a table and
replaces the block between the BENCH-TABLE markers in README.md (unless --no-readme).
Prints one JSON object (all results by name) as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- BENCH-TABLE:BEGIN -->", "<!-- BENCH-TABLE:END -->"

# name → (script, arguments, quick arguments for a short run)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "intake": ("intake", ["--requests", "2000"], ["--requests", "300"]),
    "intake --concurrency 32": ("intake", ["--requests", "2000", "--concurrency", "32"],
                                ["--requests", "300", "--concurrency", "32"]),
    "intake --workers 1": ("intake", ["--requests", "2000", "--workers", "1"], ["--requests", "300", "--workers", "1"]),
    "classify": ("classify", [], ["--n", "300"]),
    "dedup": ("dedup", [], ["--cases", "5000", "--queries", "200"]),
    "dispatch": ("dispatch", ["--orders", "2000"], ["--orders", "300"]),
    "stt": ("stt", [], ["--seconds", "10"]),
    "chat": ("chat", ["--conversations", "200"], ["--conversations", "40"]),
    "answers": ("answers", [], ["--entries", "5000", "--queries", "200"]),
}


def machine() -> dict:
    """How fast this machine is right now: shared VMs vary by tens of percent between runs, so every table
    carries a pure-Python reference loop (10 million additions) and the load average."""
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return {"cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
            "python_loop_10m_s": round(time.perf_counter() - started, 3)}


def run(script: str, args: list[str], timeout_s: float) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / f"{script}.py"), *args, "--json"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1]) if lines else {}
        if not isinstance(result, dict):
            raise ValueError("not an object")
    except ValueError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def summary(result: dict) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    parts = []
    for key, value in result.items():
        if key == "seconds" or isinstance(value, list):
            continue
        if isinstance(value, dict):  # one level of nesting, e.g. chat's per-door figures
            parts += [f"{key}.{k} {v}" for k, v in value.items() if not isinstance(v, dict | list)]
            continue
        parts.append(f"{key} {value}")
    return ", ".join(parts)


def table(results: dict[str, dict]) -> str:
    rows = ["| benchmark | result |", "| --- | --- |"]
    rows += [f"| `bench/{BENCHES[name][0]}.py{name.removeprefix(BENCHES[name][0])}` | {summary(res)} |"
             if name in BENCHES else f"| {name} | {summary(res)} |" for name, res in results.items()]
    return "\n".join(rows)


def write_readme(text: str) -> bool:
    readme = README.read_text(encoding="utf-8")
    if BEGIN not in readme or END not in readme:
        return False
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test of the scripts)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    parser.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    results: dict[str, dict] = {"machine": machine()}
    if not args.json:
        print(f"machine: {summary(results['machine'])}", flush=True)
    for name in args.only or list(BENCHES):
        script, full, quick = BENCHES[name]
        results[name] = run(script, quick if args.quick else full, args.timeout)
        if not args.json:
            print(f"{name}: {summary(results[name])}", flush=True)
    text = table(results)
    if not args.no_readme and not args.quick and not write_readme(text):
        print(f"README.md has no {BEGIN} … {END} block; table not written", file=sys.stderr)
    if not args.json:
        print(text)
    print(json.dumps(results, ensure_ascii=False))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
