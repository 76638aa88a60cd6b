"""Every notebook in notebooks/ runs top to bottom at its small size, and is stored clean.

Each notebook is executed top to bottom in a real Jupyter kernel with nbclient (the ``dev``
extra installs nbclient and ipykernel); a failing cell's error names the notebook and the cell.
The environment is pinned: ``MEDRECON_NOTEBOOK_SIZE=small``,
no ``MEDRECON_NOTEBOOK_FILE`` / ``MEDRECON_NOTEBOOK_CHECKPOINT`` (the demo data and the shipped
prior), matplotlib's non-interactive Agg backend, a temporary working directory.

Full-size runs are not part of the suite; run one with
``MEDRECON_NOTEBOOK_SIZE=full jupyter nbconvert --to notebook --execute notebooks/NAME.ipynb
--output NAME-full.ipynb``.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"quickstart", "acceleration_study", "speed_study"}
SIZE_VAR = "MEDRECON_NOTEBOOK_SIZE"
# absolute paths of a developer's machine must not end up in a notebook
ABSOLUTE = re.compile(r"(?<![\w.~])(/(work|home|tmp|root|Users|mnt|opt)/|[A-Za-z]:\\)")


def _cells(path: Path, kind: str) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.fixture
def notebook_env(monkeypatch, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    plt.switch_backend("Agg")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel is a subprocess: it reads the environment
    # one intra-op thread in the kernel: at the notebooks' small size, OpenMP threads only add
    # spin-waiting, which turns into seconds per call when the cores are shared (3.5x measured)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(SIZE_VAR, "small")
    monkeypatch.delenv("MEDRECON_NOTEBOOK_FILE", raising=False)
    monkeypatch.delenv("MEDRECON_NOTEBOOK_CHECKPOINT", raising=False)
    yield
    plt.close("all")


def test_notebooks_exist():
    assert EXPECTED <= {p.stem for p in NOTEBOOKS}, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_clean(path):
    """Outputs cleared, a documented parameters cell first, no absolute paths."""
    first = json.loads(path.read_text())["cells"][0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell must be markdown"
    assert SIZE_VAR in _source(first) and "full" in _source(first), \
        f"{path.name}: the first markdown cell must document {SIZE_VAR}=small|full"
    code = _cells(path, "code")
    params = _source(code[0])
    assert params.startswith("# parameters") and SIZE_VAR in params, \
        f"{path.name}: the first code cell must be the parameters cell reading {SIZE_VAR}"
    for i, cell in enumerate(code):
        assert cell["outputs"] == [] and cell["execution_count"] is None, \
            f"{path.name}: code cell {i} has stored outputs (clear them before saving)"
    for cell in json.loads(path.read_text())["cells"]:
        hit = ABSOLUTE.search(_source(cell))
        assert hit is None, f"{path.name}: absolute path {hit.group(0)!r} in a cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_sizes(path, monkeypatch):
    """``full`` changes at least one parameter besides SIZE/FULL; other values are refused."""
    src = compile(_source(_cells(path, "code")[0]), f"{path.name}[parameters]", "exec")
    values = {}
    for size in ("small", "full"):
        monkeypatch.setenv(SIZE_VAR, size)
        ns: dict = {}
        exec(src, ns)
        values[size] = {k: v for k, v in ns.items()
                        if k.isupper() and k not in ("SIZE", "FULL")}
        assert ns["SIZE"] == size
    assert values["small"] != values["full"], f"{path.name}: full size changes nothing"
    monkeypatch.setenv(SIZE_VAR, "huge")
    with pytest.raises(ValueError, match=SIZE_VAR):
        exec(src, {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, notebook_env, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:  # pragma: no cover - the message is the point
        raise AssertionError(f"{path.name}: a cell failed:\n{exc}") from None
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors}"
