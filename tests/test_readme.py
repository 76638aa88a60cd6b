"""README's self-contained Python examples run as written (the ones that need no user file)."""
import re
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_sampling_example_runs(capsys):
    (block,) = [b for b in BLOCKS if "GaussianPrior" in b]
    exec(compile(block, "README.md", "exec"), {"__name__": "__main__"})
    err = float(re.search(r"relative error after 10 NFE: ([0-9.]+)", capsys.readouterr().out)[1])
    assert 0 < err < 0.2
