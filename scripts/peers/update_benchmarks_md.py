#!/usr/bin/env python3
"""Replaces a marked section of BENCHMARKS.md with a merged peer table (scripts/peers/merge.py).

Usage: python3 scripts/peers/update_benchmarks_md.py SECTION TABLE.md [BENCHMARKS.md]
The section is delimited by `<!-- SECTION:begin -->` and `<!-- SECTION:end -->`; it is
appended at the end of the file if the markers are missing.
"""
import pathlib
import sys


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    section, table = sys.argv[1], pathlib.Path(sys.argv[2])
    target = pathlib.Path(sys.argv[3] if len(sys.argv) > 3 else "BENCHMARKS.md")
    # Demote the table file's headings so they nest under the section's own heading.
    body = "\n".join(
        "###" + line if line.startswith("#") else line
        for line in table.read_text().strip().splitlines()
    )
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = target.read_text() if target.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    target.write_text(text)
    print(f"updated section '{section}' of {target} from {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
