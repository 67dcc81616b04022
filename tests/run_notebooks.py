"""Runs notebooks with the evcxr kernel and checks them: no error outputs, no panic or `Error:`
text in any output (evcxr reports some failures as plain output without failing the cell),
and at least one inline SVG chart per notebook. With --write, executed notebooks are saved;
each code cell's wall time is printed (the first one includes the `:dep` build).

With --jobs=N the first notebook runs alone (its kernel builds the library into $EVCXR_TMPDIR and
fills evcxr's `:cache`), then the others run N at a time, longest first, each lane with its own
build folder: evcxr uses EVCXR_TMPDIR itself as the kernel's crate, so two kernels cannot share
one. Most of a quick notebook's time is single-threaded (the kernel's rust-analyzer, rustc on the
cell, linking), so on two cores two lanes with one compute thread each finish sooner than one
(measured on the project's 2-core machine: notebooks 03 and 04 side by side in 324 s, one after
the other in 646 s; with a pool of both cores in each lane, 06 and 07 side by side took over 21
and 14 minutes, against about 8 and 5 one after the other)."""
import math
import os
import queue
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

BAD = ("panicked at", "Error:", "error[E", "thread 'main'")
FLAKE = "Compilation failed, but no parsable errors were found"


def texts(output):
    if "text" in output:
        yield output["text"]
    for key in ("text/plain", "text/html"):
        if key in output.get("data", {}):
            yield output["data"][key]
    if output.get("output_type") == "error":
        yield "Error: " + output.get("ename", "") + " " + output.get("evalue", "")


def check(path, write):
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    # A fresh evcxr kernel can take minutes to answer when another one is busy beside it (its
    # rust-analyzer loads the standard library first); nbclient's default wait is 60 s.
    client = NotebookClient(
        nb, timeout=3600, startup_timeout=900, kernel_name="rust", resources={"metadata": {"path": "notebooks"}}
    )
    problems = []
    try:
        client.execute()
    except CellExecutionError as e:
        problems.append(str(e).splitlines()[-1] if str(e) else "a cell failed")
    except Exception as e:  # a kernel that died or never started: report it under this notebook
        problems.append(f"kernel: {type(e).__name__}: {e}")
    charts = 0
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            for text in texts(out):
                charts += text.count("<svg")
                for bad in BAD:
                    if bad in text:
                        lines = text.splitlines()
                        at = next(k for k, l in enumerate(lines) if bad in l)
                        # The matching line and a few after it: a compiler's or kernel's reason.
                        problems.extend(f"cell {i}: {l.strip()[:200]}" for l in lines[at : at + 8] if l.strip())
                        break
    if charts == 0:
        problems.append("no inline SVG chart")
    if problems:
        # The kernel's own account of a failure (a crashed subprocess says why only on stderr).
        for i, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stderr":
                    tail = [l for l in out.get("text", "").splitlines() if l.strip()][-5:]
                    problems.extend(f"cell {i} stderr: {l.strip()[:300]}" for l in tail)
    seconds = time.time() - start
    cell_seconds = [(i, elapsed(cell)) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    if write and not problems:
        nbformat.write(nb, path)
    return problems, seconds, cell_seconds


def elapsed(cell):
    """Seconds from the kernel starting the cell to its reply (nbclient records both)."""
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return float("nan")
    return (end - start).total_seconds()


def run_here(path, write):
    """Checks one notebook in this process; prints its report and returns whether it passed."""
    problems, seconds, cell_seconds = check(path, write)
    if any(FLAKE in p for p in problems):
        # Once seen with two kernels side by side: the kernel's build gave no compiler message at
        # all. A real compile error names its line, so only this case is run a second time.
        print(f"{path}: the kernel's build failed without a compiler message; running it again", flush=True)
        problems, seconds, cell_seconds = check(path, write)
    status = "ok" if not problems else "FAILED"
    print(f"{path}: {status} in {seconds:.0f}s", flush=True)
    print("  cells: " + ", ".join(f"{i}: {s:.0f}s" for i, s in cell_seconds), flush=True)
    for p in problems:
        print(f"  {p}", flush=True)
    return not problems


def recorded_seconds(path):
    """The notebook's last recorded run time (its committed outputs), to start long ones first."""
    nb = nbformat.read(path, as_version=4)
    return sum(s for s in (elapsed(c) for c in nb.cells if c.cell_type == "code") if not math.isnan(s))


def run_in_lanes(paths, jobs, write):
    """Runs `paths` `jobs` at a time, each in a child process of this script whose kernel builds in
    its lane's folder; prints each notebook's report when it finishes. Returns the failures."""
    base = os.environ["EVCXR_TMPDIR"]
    lanes = queue.Queue()
    for k in range(jobs):
        lanes.put(base if k == 0 else f"{base}-lane{k}")

    def one(path):
        lane = lanes.get()
        try:
            os.makedirs(lane, exist_ok=True)
            args = [sys.executable, os.path.abspath(__file__)] + (["--write"] if write else []) + [path]
            env = dict(os.environ, EVCXR_TMPDIR=lane)
            # Candle's CPU ops and matmuls use a thread pool of every core whose idle threads
            # spin; two such pools on the same cores slow each other down, so each lane gets its
            # share of the cores.
            env.setdefault("RAYON_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
            done = subprocess.run(args, env=env, capture_output=True, text=True)
            return done.returncode, done.stdout + done.stderr
        finally:
            lanes.put(lane)

    failed = 0
    ordered = sorted(paths, key=recorded_seconds, reverse=True)
    with ThreadPoolExecutor(jobs) as pool:
        for future in as_completed([pool.submit(one, p) for p in ordered]):
            code, report = future.result()
            print(report, end="", flush=True)
            failed += code != 0
    return failed


def main():
    write = "--write" in sys.argv
    jobs = next((int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--jobs=")), 1)
    paths = [p for p in sys.argv[1:] if not p.startswith("--")]
    if jobs <= 1 or len(paths) <= 1:
        failed = sum(not run_here(p, write) for p in paths)
    else:
        # The first notebook's kernel and lane 0 must build in the same folder.
        os.environ.setdefault("EVCXR_TMPDIR", tempfile.mkdtemp(prefix="evcxr-notebooks-"))
        failed = int(not run_here(paths[0], write)) + run_in_lanes(paths[1:], jobs, write)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
