"""The operator benchmark runs on tiny sizes and its three implementations agree."""
import json

from medrecon.bench.operators import format_table, run
from medrecon.cli.main import main


def test_bench_rows_agree_and_format():
    rows = run(sizes=[(4, 32, 16)], repeats=1, sigpy=True)
    assert [r.op for r in rows] == ["forward", "adjoint", "normal"]
    for r in rows:
        assert r.max_rel_err < 1e-5  # ours == fastMRI-style on the same inputs
        assert r.ours_ms > 0 and r.fastmri_ms > 0 and r.sigpy_ms > 0
    table = format_table(rows)
    assert "x vs fastMRI" in table and table.count("\n") == 4


def test_bench_cli_json(capsys):
    assert main(["bench", "operators", "--sizes", "4x16x8", "--repeats", "1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["op"] for r in rows} == {"forward", "adjoint", "normal"}
    assert all(r["max_rel_err"] < 1e-5 for r in rows)


def test_bench_cli_bad_size(capsys):
    assert main(["bench", "operators", "--sizes", "16by640"]) == 2
    assert "CxHxW" in capsys.readouterr().err


def test_bench_cli_device_errors(capsys):
    import torch

    assert main(["bench", "operators", "--sizes", "4x16x8", "--device", "gpu0"]) == 2
    assert "torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "operators", "--sizes", "4x16x8", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
