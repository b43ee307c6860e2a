"""The README's example test is the one the suite runs (tests/integration/test_readme_example.py)."""

from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def test_readme_example_is_the_tested_file():
    example = (ROOT / "tests/integration/test_readme_example.py").read_text()
    code = "\n".join(line for line in example.splitlines() if not line.startswith("#")).strip()
    readme = (ROOT / "README.md").read_text()
    assert f"```python\n{code}\n```" in readme
    assert len(code.splitlines()) <= 10
