"""Sum the fuzz runs recorded in build/fuzz/logs/ into the table of docs/security.md.

One log per run (``<target>-<n>.log``, the output of libFuzzer with
``-print_final_stats=1``); a run that ended with a crash counts its inputs up to
the crash (its time estimated from its average rate) and names its reproducer
(``<target>-crash-*``, ``-timeout-*``, ``-oom-*``). Corpus sizes are those
of build/fuzz/<target> now.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "fuzz"


def main() -> None:
    logs = WORK / "logs"
    targets = sorted(p.stem.removeprefix("fuzz_") for p in (ROOT / "fuzz").glob("fuzz_*.py"))
    rows = []
    total = 0
    for t in targets:
        runs = seconds = stints = 0
        for log in sorted(logs.glob(f"{t}-*.log")):
            text = log.read_text(errors="replace")
            done = re.search(r"^Done (\d+) runs in (\d+) second", text, re.MULTILINE)
            units = re.search(r"^stat::number_of_executed_units: (\d+)", text, re.MULTILINE)
            if done:
                runs += int(done.group(1))
                seconds += int(done.group(2))
            elif units:  # ended by a crash or a signal: the stats still count
                runs += int(units.group(1))
                rate = re.search(r"^stat::average_exec_per_sec: +(\d+)", text, re.MULTILINE)
                if rate and int(rate.group(1)):
                    seconds += int(units.group(1)) // int(rate.group(1))
            stints += 1
        corpus = [p for p in (WORK / t).glob("*") if p.is_file()]
        crashes = sorted(p.name for p in logs.glob(f"{t}-crash-*")) + sorted(
            p.name for p in logs.glob(f"{t}-timeout-*")) + sorted(p.name for p in logs.glob(
                f"{t}-oom-*"))
        total += runs
        rows.append(
            f"| {t} | {stints} | {runs:,} | {seconds / 60:.0f} min | {len(corpus):,} files, "
            f"{sum(p.stat().st_size for p in corpus) / 1024:.0f} KiB | "
            f"{', '.join(crashes) or 'none'} |"
        )
    print("| target | runs | inputs | time | corpus | crashes |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntotal: {total:,} inputs", file=sys.stdout)


if __name__ == "__main__":
    main()
