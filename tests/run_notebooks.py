"""Runs notebooks with the evcxr kernel and checks them: no error outputs, no panic or `Error:`
text in any output (evcxr reports some failures as plain output without failing the cell),
and at least one inline SVG chart per notebook. With --write, executed notebooks are saved;
each code cell's wall time is printed (the first one includes the `:dep` build)."""
import sys
import time
from datetime import datetime

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

BAD = ("panicked at", "Error:", "error[E", "thread 'main'")


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
    client = NotebookClient(nb, timeout=3600, kernel_name="rust", resources={"metadata": {"path": "notebooks"}})
    problems = []
    try:
        client.execute()
    except CellExecutionError as e:
        problems.append(str(e).splitlines()[-1] if str(e) else "a cell failed")
    charts = 0
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            for text in texts(out):
                charts += text.count("<svg")
                for bad in BAD:
                    if bad in text:
                        line = next(l for l in text.splitlines() if bad in l)
                        problems.append(f"cell {i}: {line.strip()[:200]}")
    if charts == 0:
        problems.append("no inline SVG chart")
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


def main():
    write = "--write" in sys.argv
    paths = [p for p in sys.argv[1:] if not p.startswith("--")]
    failed = 0
    for path in paths:
        problems, seconds, cell_seconds = check(path, write)
        status = "ok" if not problems else "FAILED"
        print(f"{path}: {status} in {seconds:.0f}s", flush=True)
        print("  cells: " + ", ".join(f"{i}: {s:.0f}s" for i, s in cell_seconds), flush=True)
        for p in problems:
            print(f"  {p}", flush=True)
        failed += bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
