"""Time `wmhseg preprocess` on one raw T1 + FLAIR subject: median wall time of 3 runs, peak RSS.

Usage: python benchmarks/bench_preprocess.py [DATA_DIR]  (default ../shared/data)
Each run uses a fresh output folder and --no-cache, so every stage is computed.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    data = Path(
        sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / ".." / "shared" / "data"
    )
    subject = data / "open_ms_data_longitudinal_raw" / "patient01"
    walls: list[float] = []
    peaks_mb: list[float] = []
    cpus: list[float] = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as out:
            command = [
                "/usr/bin/time", "-v", sys.executable, "-m", "wmhseg", "preprocess",
                "--t1", str(subject / "study1_T1W.nii.gz"),
                "--flair", str(subject / "study1_FLAIR.nii.gz"),
                "--subject", "patient01", "--out", out, "--no-cache",
            ]  # fmt: skip
            start = time.perf_counter()
            finished = subprocess.run(command, capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - start)
            match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", finished.stderr)
            peaks_mb.append(int(match.group(1)) / 1024 if match else float("nan"))
            # CPU time (user + system) varies less than wall time on a machine shared with
            # other jobs.
            user = re.search(r"User time \(seconds\): ([\d.]+)", finished.stderr)
            system = re.search(r"System time \(seconds\): ([\d.]+)", finished.stderr)
            cpus.append(float(user.group(1)) + float(system.group(1)) if user and system else 0.0)
    runs = ", ".join(f"{wall:.1f}" for wall in walls)
    print(f"wall s per run: {runs}; median {statistics.median(walls):.1f}")
    cpu_runs = ", ".join(f"{cpu:.1f}" for cpu in cpus)
    print(f"CPU s per run: {cpu_runs}; median {statistics.median(cpus):.1f}")
    print(f"peak RSS MB: {max(peaks_mb):.0f}")


if __name__ == "__main__":
    main()
