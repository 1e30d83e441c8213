"""The README's Python examples run as written, and do what their comments say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    from prunelab.criteria import available_criteria, unregister_criterion

    before = set(available_criteria())
    scope: dict[str, object] = {}
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), scope)
    finally:  # criteria an example registers must not leak into other tests
        for name in set(available_criteria()) - before:
            unregister_criterion(name)
    model = scope.get("model")
    assert isinstance(model, torch.nn.Module)
    result = scope.get("result")
    if hasattr(result, "masked"):  # a structured example: smaller, and masked like it
        size = sum(p.numel() for p in result.model.parameters())
        assert size < sum(p.numel() for p in model.parameters())
        model = result.masked
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # No layer of an example is ever emptied, and every example really prunes.
    assert all(int(torch.count_nonzero(w)) > 0 for w in weights)
    assert any(int(torch.count_nonzero(w)) < w.numel() for w in weights)
