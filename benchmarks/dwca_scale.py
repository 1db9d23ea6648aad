"""Reading and planning a GBIF-sized Darwin Core Archive: seconds and peak resident memory.

Writes a synthetic DwC-A (:func:`herbid.data.synthetic.archive.write_dwca`: ROWS
occurrences, 1-2 image URLs each on loopback hosts, in a multimedia extension), then runs
``herbid dataset build ARCHIVE --out DIR --plan`` in a child process and samples the
child's own peak RSS (``VmHWM``, what ``/usr/bin/time -v`` calls "Maximum resident set
size"). Nothing is downloaded. With ``--baseline`` it also runs, in another child on
the same archive, the list-based read the full build does before fetching
(``read_sources`` + ``normalise_names``, every record held), for the ratio.

Issue 14's acceptance: 1 M occurrences planned under 2 GB.

    python benchmarks/dwca_scale.py             # 100 k rows, a quick look
    python benchmarks/dwca_scale.py --full      # 1 M rows, the acceptance figure
    python benchmarks/dwca_scale.py --rows 200000 --baseline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from herbid.data.plan import PLAN
from herbid.data.synthetic.archive import write_dwca

QUICK_ROWS = 100_000
FULL_ROWS = 1_000_000
#: Issue 14's bound on the plan's peak RSS at 1 M occurrences.
LIMIT_BYTES = 2 * 2**30
_LIST_READ = """
import sys
from herbid.data.build import is_url, normalise_names, read_sources
from herbid.data.sources.base import ProblemLog
problems = ProblemLog()
records, _ = read_sources([sys.argv[1]], problems)
records = normalise_names(records, problems, {})
print(len(records), len({r.source_path for r in records if is_url(r.source_path)}))
"""


def _high_water_kib(pid: int) -> int:
    """``VmHWM`` of a running process: the peak of its own address space since its ``exec``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def child_peak(argv: list[str]) -> dict[str, Any]:
    """Run ``argv``; its wall and CPU seconds, exit code, output and peak RSS in bytes.

    The peak is the child's ``VmHWM``, sampled every 10 ms: ``wait4``'s ``ru_maxrss``
    would carry the parent's high-water mark into the child across fork and ``exec``
    (a test session or an earlier benchmark section of several GB). Output goes through
    files so that a chatty child cannot block on a full pipe meanwhile.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], _high_water_kib(child.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        peak_kib = peak[0] or usage.ru_maxrss  # no /proc: the rusage figure, an upper bound
        return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "returncode": child.returncode,
                "stdout": out.read(), "stderr": err.read(), "peak_rss_bytes": peak_kib * 1024}


def plan_command(archive: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from herbid.cli.main import run; run()", "dataset", "build", str(archive),
            "--out", str(out), "--plan", "--json", "--no-progress"]


def measure(rows: int, *, workdir: str | Path | None = None, baseline: bool = False, seed: int = 0
            ) -> dict[str, Any]:
    """Generate ``rows`` occurrences, plan them in a child process; seconds, peak RSS and counts."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        summary = write_dwca(root / "archive.zip", rows, seed=seed)
        generated = time.perf_counter() - started
        run = child_peak(plan_command(summary.path, root / "plan"))
        if run["returncode"] not in (0, 1):
            raise RuntimeError(f"herbid dataset build --plan failed: {run['stderr'].strip()[-500:]}")
        plan = json.loads((root / "plan" / PLAN).read_text())
        result: dict[str, Any] = {
            "rows": rows,
            "media_rows": summary.media_rows,
            "archive_mib": round(summary.path.stat().st_size / 2**20, 1),
            "generate_s": round(generated, 2),
            "plan_s": round(run["seconds"], 2),
            "plan_cpu_s": round(run["cpu_seconds"], 2),
            "plan_peak_rss_mib": round(run["peak_rss_bytes"] / 2**20, 1),
            "records": plan["counts"]["records"],
            "with_usable_name": plan["counts"]["with_usable_name"],
            "unique_urls": plan["counts"]["unique_urls"],
            "dropped_by_reason": plan["dropped_by_reason"],
            "hosts": plan["hosts"],
        }
        if baseline:
            listed = child_peak([sys.executable, "-c", _LIST_READ, str(summary.path)])
            result["list_read_s"] = round(listed["seconds"], 2)
            result["list_read_cpu_s"] = round(listed["cpu_seconds"], 2)
            result["list_read_peak_rss_mib"] = round(listed["peak_rss_bytes"] / 2**20, 1)
            result["rss_ratio_list_over_plan"] = round(listed["peak_rss_bytes"] / run["peak_rss_bytes"], 2)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=QUICK_ROWS, help=f"occurrences (default {QUICK_ROWS:,})")
    parser.add_argument("--full", action="store_true", help=f"{FULL_ROWS:,} occurrences (issue 14's acceptance)")
    parser.add_argument("--baseline", action="store_true", help="also time the list-based read the build does")
    parser.add_argument("--workdir", type=Path, default=None, help="where the archive is written (default: /tmp)")
    args = parser.parse_args()
    result = measure(FULL_ROWS if args.full else args.rows, workdir=args.workdir, baseline=args.baseline)
    result["under_2_gib"] = result["plan_peak_rss_mib"] * 2**20 < LIMIT_BYTES
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
