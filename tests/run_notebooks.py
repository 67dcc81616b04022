"""Runs notebooks with the evcxr kernel and checks them: no error outputs, no panic or `Error:`
text in any output (evcxr reports some failures as plain output without failing the cell),
and at least one inline SVG chart per notebook. With --write, executed notebooks are saved."""
import sys
import time

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
    if write and not problems:
        nbformat.write(nb, path)
    return problems, seconds


def main():
    write = "--write" in sys.argv
    paths = [p for p in sys.argv[1:] if not p.startswith("--")]
    failed = 0
    for path in paths:
        problems, seconds = check(path, write)
        status = "ok" if not problems else "FAILED"
        print(f"{path}: {status} in {seconds:.0f}s", flush=True)
        for p in problems:
            print(f"  {p}", flush=True)
        failed += bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
