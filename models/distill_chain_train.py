"""The chain-distillation run (`medrecon.models.distill_chain`): teacher bank, training loop,
checkpoints, resumption.

``out/bank/``: the teacher's reconstructions, computed once in chunks of ``bank_batch`` problems
(``chunk-XXXX.pt``, written atomically; a rerun computes only the missing chunks) for
``bank_items`` training problems, plus ``val.pt`` for the ``val_items`` held-out problems (made from
the dataset's last items, which training never draws).  Problem i of the bank draws its window
index, mask and start noise from ``step_generator(seed, 1, i)``; its teacher chain's noise from
``step_generator(seed, 3, i)``.  Training step k draws its batch and the student chain's noise from
``step_generator(seed, 2, k)``, so a resumed run is bit-exact.  Checkpoints ``out/step-XXXXXXXX/``
(model, EMA, optimizer; the last ``keep``), ``out/log.jsonl`` (loss per step, then the record),
``out/plan.json`` (the settings: a rerun must match them, except that it may change ``train_steps``
while no checkpoint is past the new length), ``out/student/`` (EMA weights, no optimizer).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from medrecon.datasets.publish import write_published
from medrecon.posterior.ddim_dc import grid as dc_grid

from .checkpoint import load_checkpoint, save_checkpoint
from .distill import STUDENT, _frozen, _plan, optimizer_step, restore, save_pruned
from .distill_chain import (CENTER_FRACTIONS, COLUMN_KINDS, ChainProblem, blend_target, chain_loss, chain_problem, heldout,
                            teacher_targets)
from .train_common import CHECKPOINT_NAME, EMA, latest_checkpoint, step_generator, to_model_input
from .wrapper import DiffusionModel

__all__ = ["ChainResult", "distill_chain", "export_chain_student", "intermediate_record"]


@dataclass
class ChainResult:
    student: DiffusionModel
    grid: list[int]
    record: dict
    checkpoint: Path


def _eps(model: DiffusionModel, grad: bool):
    from medrecon.methods.priors import network_eps  # the samplers' own wrapper

    return network_eps(model, grad=grad)


def _items(dataset, idx, device, in_channels) -> torch.Tensor:
    return to_model_input(torch.stack([torch.as_tensor(dataset[i]) for i in idx]).to(device), in_channels)


def _save_atomic(obj, path: Path) -> None:
    """One bank chunk, atomically under a temp name of this process (`write_published`)."""
    write_published(path, lambda tmp: torch.save(obj, tmp))


def _problems(dataset, idx, g, device, in_channels, kinds, accelerations, rows=0, coils=0, snr=0.0) -> ChainProblem:
    return chain_problem(_items(dataset, idx, device, in_channels), g, kinds, accelerations, rows, coils, snr)


def _bank(teacher, dataset, out: Path, *, n_train, bank_items, bank_batch, val_items, teacher_steps, eta, seed,
          device, kinds, accelerations, progress, rows=0, coils=0, snr=0.0) -> tuple[ChainProblem, torch.Tensor, ChainProblem, torch.Tensor]:
    """(training problems, their targets, held-out problems, their targets), computing missing chunks."""
    bank = out / "bank"
    bank.mkdir(parents=True, exist_ok=True)
    betas, eps = teacher.schedule.betas, _eps(teacher, False)
    chunks = [(s, min(s + bank_batch, bank_items)) for s in range(0, bank_items, bank_batch)]
    jobs = [("val", range(n_train, len(dataset)))] + [(f"chunk-{c:04d}", range(a, b)) for c, (a, b) in enumerate(chunks)]
    todo = [(name, r) for name, r in jobs if not (bank / f"{name}.pt").is_file()]
    pbar = None
    if progress and todo:
        from tqdm.auto import tqdm
        pbar = tqdm(total=sum(len(r) for _, r in todo), desc=f"teacher DDNM-{teacher_steps} bank")
    for name, r in todo:
        parts = []
        for i in r:  # one generator per problem: chunking does not change the bank
            g = step_generator(seed, 1, i if name != "val" else 0x7FFF_0000 + i, device)
            j = i if name == "val" else int(torch.randint(n_train, (1,), generator=g, device=device))
            parts.append(_problems(dataset, [j], g, device, teacher.in_channels, kinds, accelerations, rows, coils, snr))
        p = ChainProblem.cat(parts)
        g = step_generator(seed, 3, r.start, device)
        target = teacher_targets(eps, p, betas, teacher_steps, eta, g)
        maps = {} if p.smaps is None else {"smaps": p.smaps}
        _save_atomic({"x": p.x, "y": p.y, "mask": p.mask, "x_T": p.x_T, "target": target, **maps}, bank / f"{name}.pt")
        if pbar is not None:
            pbar.update(len(r))
    if pbar is not None:
        pbar.close()

    def load(name):
        d = torch.load(bank / f"{name}.pt", map_location=device, weights_only=True)
        return ChainProblem(d["x"], d["y"], d["mask"], d["x_T"], d.get("smaps")), d["target"]
    train = [load(name) for name, _ in jobs[1:]]
    val_p, val_t = load("val")
    return ChainProblem.cat([p for p, _ in train]), torch.cat([t for _, t in train]), val_p, val_t


def _extend(out: Path, plan: dict, resume: bool) -> None:
    """A resumed run may change its length: when only ``train_steps`` differs from its plan and no
    checkpoint is past the new length, record it (training goes on from the last checkpoint; the
    learning rate is constant, so a longer or shorter run is the same run up to its end)."""
    file = out / "plan.json"
    if not (resume and file.is_file()):
        return
    old = json.loads(file.read_text())
    same = {k: v for k, v in old.items() if k != "train_steps"} == {k: v for k, v in plan.items() if k != "train_steps"}
    last = latest_checkpoint(out)
    done = int(last.name.split("-")[1]) if last is not None else 0
    if old.get("method") == "chain" and same and done <= plan["train_steps"] != old.get("train_steps"):
        text = json.dumps({**old, "train_steps": plan["train_steps"]}, indent=1)
        write_published(file, lambda tmp: Path(tmp).write_text(text))


def intermediate_record(checkpoint, model: DiffusionModel) -> dict | None:
    """The held-out record of an intermediate chain checkpoint (``<run>/step-XXXXXXXX``, which keeps
    only ``round_state.before``) for ``model``'s weights: the same `heldout` the run computes at its
    end, on the run's ``bank/val.pt`` with its plan's steps, eta and seed.  None when the checkpoint
    is not one of a chain run, already has its record, or its run folder lacks the bank or plan."""
    checkpoint = Path(checkpoint)
    ck = load_checkpoint(checkpoint, torch.device("cpu"), model.prediction_type)
    d = ck.extra.get("distilled") if isinstance(ck.extra.get("distilled"), dict) else {}
    run = checkpoint.parent
    val, plan_file = run / "bank" / "val.pt", run / "plan.json"
    if d.get("method") != "chain" or d.get("rounds") or not (val.is_file() and plan_file.is_file()):
        return None
    plan = json.loads(plan_file.read_text())
    v = torch.load(val, map_location="cpu", weights_only=True)
    p = ChainProblem(v["x"], v["y"], v["mask"], v["x_T"], v.get("smaps"))
    frozen = _frozen(model)
    frozen.net.to("cpu")
    with torch.no_grad():
        after = heldout(_eps(frozen, False), p, v["target"], model.schedule.betas, plan["steps"],
                        plan["student_eta"], plan["seed"], plan.get("cg_iters", 10))
    before = ck.extra.get("round_state", {}).get("before", {})
    return {"round": 1, "steps": plan["steps"], "teacher_steps": plan["teacher_steps"], "train_steps": int(ck.step),
            **{f"{k}_before": x for k, x in before.items()}, **after}


def export_chain_student(run_checkpoint, out_dir, weights: str = "ema", overwrite: bool = False,
                         cg_iters: int | None = None) -> Path:
    """`medrecon.builtin_priors.export_prior` of a chain run's checkpoint, plus, for an intermediate one,
    the held-out record its run computes at the end (`intermediate_record`, for the exported weights)
    in ``extra.distilled.rounds``, so that a shipped student chosen mid-run carries its record too."""
    from medrecon.builtin_priors import export_prior

    from .checkpoint import load_model

    path = Path(export_prior(run_checkpoint, out_dir, weights=weights, overwrite=overwrite,
                             cg_iters=cg_iters))
    record = intermediate_record(run_checkpoint, load_model(path))
    if record is not None:
        file = path / "config.json"
        cfg = json.loads(file.read_text())
        cfg["extra"]["distilled"]["rounds"] = [record]
        text = json.dumps(cfg, indent=1)
        write_published(file, lambda tmp: Path(tmp).write_text(text))
    return path


def distill_chain(teacher: DiffusionModel, dataset, out_dir, *, steps: int = 4, teacher_steps: int = 50,
                  eta: float = 0.85, student_eta: float | None = None, bank_items: int = 512, bank_batch: int = 16,
                  val_items: int = 16,
                  train_steps: int = 500, batch_size: int = 8, lr: float = 5e-5, ema_decay: float | None = None,
                  grad_clip: float | None = 1.0, save_every: int | None = None, keep: int = 2,
                  kinds=("equispaced_fraction", "random"), accelerations=(4, 8), teacher_name: str = "",
                  seed: int = 0, device=None, resume: bool = True, overwrite: bool = False,
                  progress: bool = True, rows: int = 0, init: DiffusionModel | None = None,
                  init_name: str = "", truth_weight: float = 0.0, coils: int = 0, snr: float = 0.0,
                  cg_iters: int = 0) -> ChainResult:
    """Distil ``teacher``'s ``teacher_steps``-step DDNM into a ``steps``-step DDNM student (module docstrings).

    ``rows=R``: the items are whole images and the problems R-row strips of them
    (``distill_chain.chain_problem``).  ``init``: the student's starting weights (default: the
    teacher's), e.g. an earlier student to train further on other problems; it must have the
    teacher's network and parametrisation.  ``truth_weight=w`` (0 <= w <= 1): the loss is
    (1 - w) |chain - teacher|^2 + w |chain - truth|^2, i.e. |chain - ((1 - w) teacher + w truth)|^2 up to a
    constant (`distill_chain.blend_target`); 0 is pure distillation, anything else adds the bank's
    supervised truth (docs/distill.md).  ``coils=C``: multi-coil SENSE problems with C simulated coil
    sensitivities (`distill_chain.chain_problem`), the geometry ``medrecon recon`` solves.  ``snr=s``:
    the simulator's measurement noise at SNR s in every problem (0: noise-free).  ``cg_iters=N``: the
    student chain's CG count in its data step (0: DDNM's 10; the teacher always runs DDNM's default)."""
    betas = getattr(teacher.schedule, "betas", None)
    if betas is None or teacher.prediction_type == "score" or teacher.network_config is None:
        raise ValueError(f"teacher: expected a VP eps / x0 / v model with a network_config, got a "
                         f"{teacher.prediction_type!r} model on {type(teacher.schedule).__name__}")
    if not 1 <= steps < teacher_steps:
        raise ValueError(f"steps, teacher_steps: expected 1 <= steps < teacher_steps, got {steps}, {teacher_steps}")
    if min(bank_items, bank_batch, train_steps, batch_size, val_items) < 1 or len(dataset) <= val_items:
        raise ValueError(f"bank_items, bank_batch, train_steps, batch_size, val_items: expected >= 1 and fewer "
                         f"held-out items than the {len(dataset)} of the dataset")
    bad = [a for a in accelerations if a not in CENTER_FRACTIONS] + [k for k in kinds if k not in COLUMN_KINDS]
    if bad or not accelerations or not kinds:
        raise ValueError(f"accelerations, kinds: expected some of {sorted(CENTER_FRACTIONS)} and of {COLUMN_KINDS}, "
                         f"got {list(accelerations)}, {list(kinds)}")
    if coils < 0:
        raise ValueError(f"coils: expected 0 (single-coil problems) or the number of coils, got {coils}")
    if not snr >= 0 or cg_iters < 0:
        raise ValueError(f"snr, cg_iters: expected 0 (noise-free; DDNM's 10) or a positive SNR and CG count, "
                         f"got {snr}, {cg_iters}")
    if rows < 0 or rows % teacher.network_config.downsample_factor:
        raise ValueError(f"rows: expected 0 (whole items) or a positive multiple of the network's downsampling "
                         f"factor {teacher.network_config.downsample_factor}, got {rows}")
    if init is not None and (init.network_config != teacher.network_config or init.prediction_type !=
                             teacher.prediction_type or not torch.equal(init.schedule.betas, teacher.schedule.betas)):
        raise ValueError(f"init {init_name!r}: expected the teacher's network, schedule and {teacher.prediction_type!r} "
                         f"parametrisation")
    student_eta = eta if student_eta is None else float(student_eta)
    truth_weight = float(truth_weight)
    if not 0 <= truth_weight <= 1:
        raise ValueError(f"truth_weight: expected 0 (pure distillation) <= truth_weight <= 1 (truth only), got {truth_weight}")
    if not (0 <= eta <= 1 and 0 <= student_eta <= 1):
        raise ValueError(f"eta, student_eta: expected values in [0, 1], got {eta}, {student_eta}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out, n_train = Path(out_dir), len(dataset) - val_items
    g_student = [int(t) for t in dc_grid(steps, len(betas))]
    cfg = {"train_steps": train_steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
           "grad_clip": grad_clip, "seed": seed}
    # the settings recorded only when used (older plans and checkpoints stay as they were)
    options = {k: v for k, v in (("rows", rows), ("init", init_name or "given" if init is not None else None),
                                 ("truth_weight", truth_weight), ("coils", coils), ("snr", float(snr)),
                                 ("cg_iters", cg_iters)) if v}
    student_cg = cg_iters or 10
    plan = {"method": "chain", "teacher": teacher_name, "steps": steps, "teacher_steps": teacher_steps, "eta": eta,
            "student_eta": student_eta, "bank_items": bank_items, "val_items": val_items, "kinds": list(kinds),
            "accelerations": list(accelerations), **cfg,
            **options}
    if overwrite and not resume and (out / "plan.json").is_file():
        for q in out.iterdir():  # everything a chain run writes (the bank depends on the plan too)
            if q.name in ("bank", STUDENT, "plan.json", "log.jsonl") or CHECKPOINT_NAME.match(q.name):
                shutil.rmtree(q) if q.is_dir() else q.unlink()
    _extend(out, plan, resume)
    _plan(out, plan, resume, overwrite)
    teacher = _frozen(teacher)
    teacher.net.to(device)
    train_p, train_t, val_p, val_t = _bank(
        teacher, dataset, out, n_train=n_train, bank_items=bank_items, bank_batch=bank_batch, val_items=val_items,
        teacher_steps=teacher_steps, eta=eta, seed=seed, device=device, kinds=tuple(kinds),
        accelerations=tuple(accelerations), progress=progress, rows=rows, coils=coils, snr=snr)
    info = {"steps": steps, "grid": g_student, "teacher": teacher_name,
            "teacher_grid": [int(t) for t in dc_grid(teacher_steps, len(betas))], "method": "chain",
            "data_step": "ddnm", "eta": student_eta, "teacher_eta": eta,
            **options}
    train_goal = blend_target(train_t, train_p.x, truth_weight)

    student = _frozen(teacher if init is None else init).requires_grad_(True).train()
    student.net.to(device)
    opt = torch.optim.AdamW(student.net.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(student.net, ema_decay) if ema_decay else None
    last = latest_checkpoint(out)
    start = 0
    if resume and last is not None:
        ck = load_checkpoint(last, device, teacher.prediction_type)
        start, before = restore(ck, student, opt, ema), ck.extra["round_state"]["before"]
    else:
        before = heldout(_eps(_frozen(student), False), val_p, val_t, betas, steps, student_eta, seed, student_cg)

    def save(step: int, record: dict | None = None) -> Path:
        return save_pruned(out, student, {
            "network": teacher.network_config, "objective": "distill-chain", **cfg,
            "distilled": {**info, "rounds": [record] if record else []}, "round_state": {"before": before}},
            ema, opt, step, keep)

    pbar = None
    if progress:
        from tqdm.auto import tqdm
        pbar = tqdm(total=train_steps, initial=start, desc=f"DDNM-{teacher_steps} -> DDNM-{steps}")
    eps = _eps(student, True)
    with open(out / "log.jsonl", "a") as log:
        for step in range(start, train_steps):
            g = step_generator(seed, 2, step, device)
            idx = torch.randint(len(train_t), (batch_size,), generator=g, device=device)
            loss = chain_loss(eps, train_p.index(idx), train_goal[idx], betas, steps, student_eta, g, student_cg)
            optimizer_step(student, opt, ema, loss, grad_clip)
            log.write(json.dumps({"step": step + 1, "loss": float(loss.detach())}) + "\n")
            if pbar is not None:
                pbar.update(1)
            if save_every and (step + 1) % save_every == 0 and step + 1 < train_steps:
                log.flush()
                save(step + 1)
        result = _frozen(student, ema.shadow if ema else None)
        after = heldout(_eps(result, False), val_p, val_t, betas, steps, student_eta, seed, student_cg)
        record = {"round": 1, "steps": steps, "teacher_steps": teacher_steps, "train_steps": train_steps,
                  **{f"{k}_before": v for k, v in before.items()}, **after}
        log.write(json.dumps(record) + "\n")
    if pbar is not None:
        pbar.close()
    save(train_steps, record)
    final = {"network": teacher.network_config, "objective": "distill-chain", **cfg,
             "distilled": {**info, "rounds": [record]}}
    path = save_checkpoint(out / STUDENT, result, final, overwrite=True)
    return ChainResult(student=result, grid=g_student, record=record, checkpoint=path)
