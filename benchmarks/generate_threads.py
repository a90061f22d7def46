"""How many torch threads should ``generate`` use? Seconds to generate 8 images (fashion-t2i, 20 steps, CFG 3, batch 1)
with 1 and 2 threads, on the machine as it is and with extra CPU-bound processes started beside it (busy).

    python benchmarks/generate_threads.py --out results/t2i/threads

Each measurement runs in a fresh process (OpenMP's pool is per process) and times the generation only (the
pipeline is loaded first); the 1-minute load average before each run is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safedenoiser import fileio

CHILD = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from safedenoiser.pipelines.generate import PromptItem, generate
from safedenoiser.pipelines.generate_command import load_pipeline
pipe = load_pipeline("fashion-t2i")
items = [PromptItem(i, p, 20000 + i) for i, p in enumerate(["a t-shirt", "a pullover", "a dress", "a coat",
                                                             "a sandal", "a shirt", "a sneaker", "a bag"])]
start = time.perf_counter()
generate(pipe, items, sys.argv[2], steps=20, guidance=3.0, progress=False)
print(time.perf_counter() - start)
"""
SPIN = "while True: pass"


def measure(threads: int) -> dict:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", CHILD, str(threads), tmp], capture_output=True, text=True, check=True)
    return {"threads": threads, "seconds": round(float(done.stdout.strip().splitlines()[-1]), 1),
            "load_before": round(load, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/t2i/threads")
    parser.add_argument("--spinners", type=int, default=2, help="CPU-bound processes started for the busy runs")
    args = parser.parse_args(argv)
    rows = [{"condition": "as is", **measure(t)} for t in (1, 2)]
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.spinners)]
    try:
        time.sleep(5)
        rows += [{"condition": f"busy (+{args.spinners} spinning processes)", **measure(t)} for t in (1, 2)]
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    cores = len(os.sched_getaffinity(0))
    lines = [f"Machine: {cores} usable cores ({os.cpu_count()} CPUs), shared with other jobs.", "",
             "| condition | threads | seconds for 8 images | load average before |", "|---|---|---|---|"]
    lines += [f"| {r['condition']} | {r['threads']} | {r['seconds']} | {r['load_before']} |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(out / "results.json", json.dumps({"cores": cores, "rows": rows}, indent=1) + "\n")
    fileio.write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"rows": rows}


if __name__ == "__main__":
    main()
