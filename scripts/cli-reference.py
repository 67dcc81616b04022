#!/usr/bin/env python3
"""Refreshes the `--help` blocks of docs/cli.md from the built binary; tests/cli.rs checks
that every block still matches.

    cargo build --release && python3 scripts/cli-reference.py
"""
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/secure-tuning"
DOC = ROOT / "docs/cli.md"


def help_text(command):
    out = subprocess.run([str(BIN), command, "--help"], capture_output=True, text=True, check=True).stdout
    return out.rstrip() + "\n"


def main():
    text = DOC.read_text()
    # Each block is introduced by a marker line `<!-- help: COMMAND -->` and is the fenced block after it.
    pattern = re.compile(r"(<!-- help: ([a-z-]+) -->\n```text\n)(.*?)(```)", re.S)
    text = pattern.sub(lambda m: m.group(1) + help_text(m.group(2)) + m.group(4), text)
    DOC.write_text(text)
    print("refreshed", DOC)


if __name__ == "__main__":
    main()
