"""Runs every ```python block of python/README.md, in order, in one namespace: the guide's
examples are checked code, and each block's asserts compare with numpy."""

import os
import re

GUIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def test_every_guide_block_runs_in_order(capsys):
    text = open(GUIDE, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 8, "the guide lost its examples"
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"python/README.md, block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    # The printed values the guide states in its comments.
    assert "16384 8192 3" in printed and "[500, 3] 3 2" in printed, printed
    assert "out of levels" in printed or "levels" in printed, printed
