"""``medrecon bench solvers`` (`medrecon.bench.solvers`): rows, the trained-model reference, DeepCache
counts, the CLI sections."""
import json

import pytest
import torch

from medrecon.bench.commands.solvers import main
from medrecon.bench.solver_problems import AnalyticProblem, ModelProblem, reference_trajectory
from medrecon.bench.solvers import deepcache_rows, deepcache_speed, run
from medrecon.cli.main import main as cli_main
from medrecon.models.checkpoint import save_checkpoint
from medrecon.models.networks import build_unet, preset
from medrecon.models.schedules import VPSchedule, make_betas
from medrecon.models.wrapper import DiffusionModel


def _random_unet_model(n_train=100):
    """A tiny MONAI U-Net, random non-zero output weights, on a short VP schedule."""
    net = build_unet("tiny", seed=0).eval()
    with torch.no_grad():
        for p in net.out.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return DiffusionModel(net, VPSchedule(make_betas("linear", n_train, 1e-3, 0.2)), "eps")


def test_bench_solvers_rows_and_table(capsys):
    rows = run(solvers=("ddim", "heun", "pndm"), nfes=(5, 20), size=8, batch=1)
    by = {(r.solver, r.steps): r for r in rows}
    assert by[("ddim", 20)].rel_err < by[("ddim", 5)].rel_err  # more calls, closer to the exact endpoint
    assert by[("heun", 10)].nfe == 19  # 2N - 1 model calls
    assert [r for r in rows if r.solver == "pndm"] and all(r.nfe <= 20 for r in rows)
    assert main(["--solvers", "unipc", "--nfe", "5", "--size", "8", "--batch", "1", "--sections", "analytic"]) == 0
    assert "unipc" in capsys.readouterr().out
    assert main(["--solvers", "ddim", "--nfe", "5", "--size", "8", "--batch", "1", "--sections", "analytic",
                 "--format", "markdown"]) == 0
    assert "| ddim" in capsys.readouterr().out
    with pytest.raises(ValueError, match="solvers"):
        run(solvers=("rk4",))
    with pytest.raises(ValueError, match="nfe"):
        run(solvers=("ddim",), nfes=(0,), size=8, batch=1)
    with pytest.raises(ValueError, match="--nfe"):
        main(["--nfe", "0", "--sections", "analytic"])
    with pytest.raises(ValueError, match="--solvers.*ddim"):
        main(["--solvers", "rk4", "--sections", "analytic"])


def test_bench_trained_problem_and_deepcache_rows():
    """The trained-model section: a reference through every training timestep; DeepCache rows count calls."""
    problem = ModelProblem(_random_unet_model(100), size=8, batch=1)
    assert sorted(problem.states) == list(range(100))  # a reference state at every training timestep
    rows = run(solvers=("dpm-solver++", "pndm"), nfes=(5, 20), problem=problem)
    by = {(r.solver, r.nfe): r for r in rows}
    assert by[("dpm-solver++", 20)].rel_err < by[("dpm-solver++", 5)].rel_err
    assert all(r.problem == "trained" and r.rel_err < 1 for r in rows)
    cache = deepcache_rows(problem, intervals=(2, 3), solver="ddim", steps=10)
    assert [c.interval for c in cache] == [1, 2, 3]
    assert cache[0].change_vs_full == 0.0 and cache[0].speedup == 1.0
    assert [(c.full_calls, c.cached_calls, c.deep_calls) for c in cache] == [(10, 0, 10), (5, 5, 5), (4, 6, 4)]
    assert all(0 < c.change_vs_full < 1 for c in cache[1:])


def test_bench_reference_is_accurate_on_the_analytic_prior():
    """The 1000-step DPM-Solver++(2M) reference used for trained models, checked against the exact PF-ODE."""
    pr = AnalyticProblem(size=8, batch=1)
    states, x0 = reference_trajectory(pr.eps_fn, pr.x_T(999), pr.acp)
    assert ((x0 - pr.reference(999)).norm() / pr.reference(999).norm()).item() < 1e-4
    ref0 = pr.prior.pf_ode(pr.x_T(999), pr._abar(999), pr._abar(0))
    assert ((states[0] - ref0).norm() / ref0.norm()).item() < 1e-4


def test_bench_deepcache_speed_counts_deep_calls():
    rows, info = deepcache_speed(size=8, channels=(8, 16), intervals=(2, 5), calls=10, repeats=1)
    assert [(r.interval, r.full_calls, r.deep_calls) for r in rows] == [(1, 10, 10), (2, 5, 5), (5, 2, 2)]
    assert info["parameters"] > 0 and all(r.ms_per_call > 0 for r in rows)


@pytest.mark.slow
def test_bench_solvers_quick_cli_runs_every_section(capsys):
    assert cli_main(["bench", "solvers", "--quick", "--solvers", "ddim", "dpm-solver++", "--nfe", "5", "10",
                     "--train-steps", "20", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    for title in ("Analytic Gaussian prior", "Trained model", "DeepCache on the trained model", "DeepCache speed"):
        assert title in out


def test_bench_solvers_with_a_checkpoint(tmp_path, capsys):
    model = _random_unet_model(100)
    save_checkpoint(tmp_path / "ck", model, preset("tiny"))
    assert main(["--checkpoint", str(tmp_path / "ck"), "--sections", "trained", "deepcache", "--size", "8",
                 "--batch", "1", "--solvers", "ddim", "unipc", "--nfe", "5", "--deepcache-steps", "6",
                 "--deepcache-intervals", "2", "--format", "json"]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert {r["section"] for r in rows} == {"trained-info", "trained", "deepcache"}
    assert "checkpoint" in rows[0]["model"] and rows[0]["reference_rel_err_analytic"] < 1e-2  # 100 steps
    assert [(r["solver"], r["nfe"]) for r in rows if r["section"] == "trained"] == [("ddim", 5), ("unipc", 5)]
    assert [(r["interval"], r["full_calls"]) for r in rows if r["section"] == "deepcache"] == [(1, 6), (2, 3)]
    with pytest.raises(ValueError, match="--size"):
        main(["--checkpoint", str(tmp_path / "ck"), "--sections", "trained", "--size", "7"])
