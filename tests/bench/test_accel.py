"""``medrecon bench accel --quick``: the table's rows, n/a reasons and speed-ups (tiny run)."""
import argparse

import pytest

from medrecon.bench import accel
from medrecon.bench.commands import COMMANDS
from medrecon.bench.commands import accel as command

pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions")


def test_plan_marks_what_cannot_run_here():
    rows = accel.plan_rows(["ddnm", "dds"], ["4x", "8x"], 50, 3, "cpu")
    assert len(rows) == 2 * 2 * len(accel.VARIANTS)
    by = {(r.mask, r.method, r.variant): r for r in rows}
    assert by[("8x", "ddnm", "bf16")].status == "n/a" and "GPU" in by[("8x", "ddnm", "bf16")].note
    assert by[("8x", "dds", "int8")].status == "ok" and by[("8x", "dds", "int8")].options["quantize"] == "int8"
    assert by[("4x", "ddnm", "baseline")].options == {"steps": 50}
    cuda = {r.variant: r for r in accel.plan_rows(["ddnm"], ["8x"], 50, 3, "cuda")}
    assert cuda["int8"].status == "n/a" and cuda["bf16"].status == "ok"


def test_quick_run(monkeypatch, capsys, tmp_path):
    from medrecon.methods import priors

    for k, v in (("size", 16), ("coils", 2), ("steps", 3), ("seeds", (0,))):
        monkeypatch.setitem(priors.CALIBRATION, k, v)
    assert COMMANDS["accel"] == "medrecon.bench.commands.accel"
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    out = tmp_path / "accel.md"
    args = p.parse_args(["--quick", "--methods", "ddnm", "--out", str(out)])
    assert command.main(args) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("| equispaced_fraction:4:0.2 | ddnm")]
    assert len(lines) == len(accel.VARIANTS)
    base = next(ln for ln in lines if "| baseline |" in ln)
    assert "| 1.00x |" in base and "| 4 |" in base  # NFE 4, its own speed-up 1
    int8 = next(ln for ln in lines if "| int8 |" in ln).split("|")
    assert float(int8[4]) > 10 and int8[8].strip().endswith("x")  # PSNR, speed-up
    assert "int8 calibration of ddnm" in text and out.read_text().startswith("`")


def test_bad_arguments():
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    with pytest.raises(ValueError, match="--steps"):
        command.main(p.parse_args(["--steps", "0"]))


def test_variants_select_rows_and_keep_the_baseline():
    assert [accel.variant_key(n) for n in accel.VARIANTS] == [
        "baseline", "deepcache", "int8", "bf16", "paradigms", "distilled", "int8+deepcache", "paradigms+int8"]
    assert list(accel.select_variants(["int8", "distilled"])) == ["baseline", "int8", "distilled 4"]
    rows = accel.plan_rows(["ddnm"], ["8x"], 50, 3, "cpu", ["paradigms"])
    assert [r.variant for r in rows] == ["baseline", "ParaDiGMS"]
    with pytest.raises(ValueError, match=r"--variants: unknown \['fast'\]"):
        accel.select_variants(["fast"])
