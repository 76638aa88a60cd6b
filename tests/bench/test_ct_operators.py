"""``medrecon bench ct-operators`` (`medrecon.bench.ct_operators`): our CT operators equal
scikit-image's on the timed inputs, and the command reads its sizes strictly."""
import pytest

from medrecon.bench.commands.ct_operators import parse_sizes
from medrecon.bench.ct_operators import format_table, run
from medrecon.cli.main import main

pytest.importorskip("skimage")


def test_rows_agree_with_skimage_and_format():
    rows = run(sizes=[(16, 8)], batch=2, repeats=1)
    assert [r["op"] for r in rows] == ["parallel forward", "parallel adjoint", "parallel fbp ramp",
                                       "fan forward (2K angles)", "fan adjoint (2K angles)", "fan fbp (2K angles)"]
    checked = {r["op"]: r["rel_err"] for r in rows if r["rel_err"] is not None}
    assert set(checked) == {"parallel forward", "parallel fbp ramp"} and all(e < 1e-4 for e in checked.values())
    assert all(r["ours_ms"] > 0 and r["ours_batched_ms"] > 0 for r in rows)
    assert format_table(rows).count("\n") == len(rows) + 1  # header, rule, one line a row


def test_cli_and_bad_sizes(capsys):
    assert main(["bench", "ct-operators", "--sizes", "16x8", "--batch", "2", "--repeats", "1", "--no-skimage"]) == 0
    out = capsys.readouterr().out
    assert "parallel forward" in out and "fan fbp" in out
    assert parse_sizes("64x60, 256X360") == [(64, 60), (256, 360)]
    for bad in ("64", "64x60x3", "64xK", "0x8"):
        with pytest.raises(ValueError, match="NxK"):
            parse_sizes(bad)
    assert main(["bench", "ct-operators", "--sizes", "64by60"]) == 2
    assert "--sizes" in capsys.readouterr().err
