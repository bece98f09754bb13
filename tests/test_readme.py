"""The README's code runs as written (a README example that rots is a broken promise)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block_after(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


def test_torch_pruning_and_nn_utils_prune_example_runs_as_written(capsys):
    code = _python_block_after("### Use it from Torch-Pruning / torch.nn.utils.prune")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("torch.Size([2, 10])")
    assert "filters removed" in lines[2]
