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


def test_five_line_example_runs_on_the_demo_file(tmp_path):
    """The "Python in five lines" block, with the built-in demo file in place of a fastMRI file."""
    from medrecon.datasets.demo import make_demo_file

    (block,) = [b for b in BLOCKS if "file_brain_AXT2_200_2000019.h5" in b]
    assert len(block.strip().splitlines()) == 5
    demo = make_demo_file(tmp_path / "demo.h5")
    code = block.replace('"file_brain_AXT2_200_2000019.h5"', repr(str(demo))).replace("read_slice(10)", "read_slice(1)")
    ns: dict = {"__name__": "__main__"}
    exec(compile(code, "README.md", "exec"), ns)
    res = ns["res"]
    assert res.method == "cg-sense" and res.image.shape == ns["kspace"].shape[-2:] and res.nfe == 0


def test_package_version_equals_pyproject():
    import tomllib

    import medrecon

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert medrecon.__version__ == meta["project"]["version"]
