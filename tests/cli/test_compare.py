"""`medrecon compare`: methods x accelerations -> table, CSV/JSON, optional figures."""
import csv
import json

import pytest

from medrecon.cli.compare import COLUMNS
from medrecon.cli.main import main
from medrecon.datasets.demo import make_demo_file

try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_file(tmp_path_factory.mktemp("cmp") / "demo.h5", n_slices=2, coils=4,
                          size=(64, 64))


def test_compare_writes_results(demo, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(demo), "--methods", "zero-filled,cg-sense", "--accelerations",
                 "2,4", "--center-fraction", "0.16", "--slices", "0", "--out", str(out),
                 "-o", "cg-sense.max_iter=3", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 4
    assert {(r["method"], r["acceleration"]) for r in rows} == {
        (m, a) for m in ("zero-filled", "cg-sense") for a in ("2", "4")}
    res = json.loads((out / "results.json").read_text())
    assert len(res["results"]) == 4 and res["slices"] == [0, 1]
    cg = [r for r in res["results"] if r["method"] == "cg-sense"]
    assert all(r["options"]["max_iter"] == 3 for r in cg)
    assert (out / "recon" / "cg-sense_R4.h5").is_file()
    assert "PSNR" in captured.out and "cg-sense" in captured.out
    if HAVE_MPL:
        assert (out / "images.png").is_file() and (out / "metrics.png").is_file()
    else:
        assert "matplotlib is not installed" in captured.err
    # results are protected
    assert main(["compare", str(demo), "--methods", "zero-filled", "--out", str(out)]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_compare_argument_errors(demo, capsys):
    assert main(["compare", str(demo), "--methods", "nope"]) == 2
    assert "valid methods" in capsys.readouterr().err
    assert main(["compare", str(demo), "--methods", "zero-filled", "-o", "max_iter=3"]) == 2
    assert "no method" in capsys.readouterr().err
    assert main(["compare", str(demo), "--methods", "cg-sense", "-o", "dds.steps=3"]) == 2
    assert main(["compare", str(demo), "--methods", "cg-sense", "--accelerations", "0.5"]) == 2
