"""Progressive distillation (Salimans & Ho, ICLR 2022) of a VP prior into a few-step DDIM sampler.

Reference code: google-research/google-research ``diffusion_distillation/diffusion_distillation/dpm.py``
(commit 1d4d2f1), ``Model.training_losses`` L250-284 (two teacher DDIM steps, the x target implied by
z_teacher, the teacher's single-step x at i == 0) and L300-305 (``snr_trunc``: max(x_mse, eps_mse),
i.e. the truncated-SNR weight below).

Alg. 2: the student, initialised from the teacher, learns to take in one DDIM (eta = 0) step what the
teacher takes in two; each round halves the steps (N -> N/2 -> ... -> ``target_steps``) and the
trained student is the next round's teacher.  For z_t = alpha_t x + sigma_t eps at a student grid
time t with next time t'' and the teacher's midpoint t':

    z_t'  = alpha_t'  x_eta(z_t)  + sigma_t'  eps_eta(z_t)       teacher DDIM step t  -> t'
    z_t'' = alpha_t'' x_eta(z_t') + sigma_t'' eps_eta(z_t')      teacher DDIM step t' -> t''
    x~    = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)   (Alg. 2)
    L     = max(alpha_t^2 / sigma_t^2, 1) |x~ - x_theta(z_t)|^2   truncated-SNR weighting (Sec. 4)

so one student DDIM step with x_theta = x~ lands exactly on the teacher's z_t''.  (The paper's DDIM
step alpha' x + (sigma'/sigma)(z - alpha x) is alpha' x + sigma' eps, the form of the samplers.)

Parametrisation: the student keeps the teacher's (eps for the shipped priors), so its checkpoint is a
drop-in prior for every sampler; the loss is on x_theta = (z_t - sigma_t eps_theta) / alpha_t, the x0
the samplers compute.  Departure: Sec. 4 recommends x, (x, eps) or v for the student, eps being
unstable where alpha_t -> 0; we keep eps to stay compatible with the teacher's weights and samplers.

Grid: the final student's is ``medrecon.posterior.ddim_dc.grid(target_steps, T)`` (the leading times
k T/K, then -1 for abar = 1), the times dds / ddnm / ccdf use.  A round's teacher grid refines its
student's (`refine`): the integer midpoint of every interval, one time above the top, and the last
step 0 -> -1 kept whole (both grids end with it; its target is the teacher's one step).  For T
divisible by 2K this is ``grid(2K)`` itself (T = 1000: K <= 4); otherwise the intermediate grids are
close to, not equal to, the leading ones (recorded in each round's checkpoint).  Training times:
i uniform over the student's K steps (Alg. 2).  abar: the samplers' table (float32 cumprod).

Runs (one process): ``out/round-RR/step-XXXXXXXX/`` checkpoints (model, EMA, optimizer; step k of
round r draws from ``step_generator(seed, r, k)``, so a resumed round is bit-exact), ``round-RR/
log.jsonl``, ``plan.json`` (the settings: a rerun must match them) and ``student/`` (the final
student, EMA weights).  A rerun skips finished rounds and resumes the current one from its last
checkpoint.  Each round records the held-out error against its teacher on ``val_items`` fixed
items (excluded from training; fixed noise, every step of the grid): the MSE between the student's
one step and the teacher's two (before and after training) and the weighted loss.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .schedules import spacing
from .train_common import CHECKPOINT_NAME, EMA, latest_checkpoint, randn_like, step_generator, to_model_input
from .wrapper import DiffusionModel

__all__ = ["DistillResult", "abar_table", "leading_grid", "refine", "round_grids", "default_teacher_steps",
           "teacher_target", "distill_loss", "heldout", "distill"]

PLAN, STUDENT = "plan.json", "student"


def abar_table(betas) -> torch.Tensor:
    """abar of the training ``betas`` as the samplers keep it (float32 cumprod, upcast)."""
    return torch.cumprod(1.0 - torch.as_tensor(betas).detach().cpu().float(), 0).double()


def leading_grid(steps: int, n_train: int) -> list[int]:
    """The K + 1 times of the K-step DDIM-with-DC grid: leading k T/K, descending, then -1."""
    return [int(t) for t in spacing("leading", int(steps), int(n_train))] + [-1]


def refine(g: list[int]) -> list[int]:
    """The 2K-step teacher grid of the K-step student grid ``g`` (module docstring)."""
    gaps = [a - b for a, b in zip(g[:-2], g[1:-1])]
    if len(g) < 3 or g[-2:] != [0, -1] or min(gaps) < 2:
        raise ValueError(f"grid {g}: cannot be halved (needs >= 2 steps ending 0, -1 and intervals of >= 2 "
                         f"timesteps); ask for fewer teacher steps")
    out = [g[0] + gaps[0] // 2]
    for a, b in zip(g[:-2], g[1:-1]):
        out += [a, (a + b) // 2]
    return out + [0, -1]


def default_teacher_steps(target_steps: int) -> int:
    """2K doubled until >= 64: the teacher grid of the first round."""
    n = 2 * int(target_steps)
    while n < 64:
        n *= 2
    return n


def round_grids(target_steps: int, teacher_steps: int, n_train: int) -> list[list[int]]:
    """[teacher grid (``teacher_steps``), ..., student grid (``target_steps``)], each refining the next."""
    k, n = int(target_steps), int(teacher_steps)
    if not 2 <= k < n <= n_train or n % k or (n // k) & (n // k - 1):
        raise ValueError(f"target_steps={target_steps}, teacher_steps={teacher_steps}: expected 2 <= target "
                         f"< teacher <= {n_train} with teacher = target * 2^R")
    grids = [leading_grid(k, n_train)]
    while len(grids[0]) - 1 < n:
        grids.insert(0, refine(grids[0]))
    if grids[0][0] >= n_train:
        raise ValueError(f"teacher_steps={n}: the teacher grid {grids[0][:3]}... leaves the {n_train} timesteps")
    return grids


def _ab(acp: torch.Tensor, t: torch.Tensor, like: torch.Tensor):
    """(alpha_t, sigma_t) [B, 1, ...] float32 for int times t [B] (-1: abar = 1)."""
    abar = torch.where(t >= 0, acp[t.clamp(min=0)], torch.ones((), dtype=acp.dtype, device=acp.device))
    shape = (-1,) + (1,) * (like.ndim - 1)
    return abar.sqrt().float().reshape(shape), (1 - abar).sqrt().float().reshape(shape)


def _ddim(model: DiffusionModel, z, t, t_next, acp):
    """One DDIM step (eta 0) t -> t_next: (z_next, x_hat), as ``medrecon.solvers.ddim``."""
    a, s = _ab(acp, t, z)
    eps = model.eps(z, t)
    x = (z - s * eps) / a
    a2, s2 = _ab(acp, t_next, z)
    return a2 * x + s2 * eps, x


@torch.no_grad()
def teacher_target(teacher: DiffusionModel, z, t, t_end, acp):
    """(x~, z_t'') of Alg. 2: two teacher DDIM steps t -> (t + t'')//2 -> t'' (one when t'' = -1)."""
    two = t_end >= 0
    mid = torch.where(two, (t + t_end) // 2, t_end)
    z_end, _ = _ddim(teacher, z, t, mid, acp)
    if bool(two.any()):
        z_end = z_end.clone()
        z_end[two] = _ddim(teacher, z_end[two], mid[two], t_end[two], acp)[0]
    a, s = _ab(acp, t, z)
    a2, s2 = _ab(acp, t_end, z)
    return (z_end - (s2 / s) * z) / (a2 - (s2 / s) * a), z_end


def _weighted(student: DiffusionModel, z, t, x_tilde, acp):
    """max(SNR_t, 1) |x~ - x_theta(z_t)|^2, mean over items and pixels (real and imaginary parts)."""
    a, s = _ab(acp, t, z)
    d = x_tilde - (z - s * student.eps(z, t)) / a
    d = torch.view_as_real(d) if d.is_complex() else d
    return ((a / s).square().clamp(min=1.0).flatten() * d.float().square().flatten(1).mean(1)).mean()


def _noisy(x0, eps, t, acp):
    a, s = _ab(acp, t, x0)
    return a * x0 + s * eps


def distill_loss(student: DiffusionModel, teacher: DiffusionModel, x0, grid: list[int], acp, g):
    """One Monte-Carlo estimate of the round's loss on a clean batch ``x0`` (Alg. 2, inner loop)."""
    times = torch.tensor(grid, device=x0.device)
    i = torch.randint(0, len(grid) - 1, (x0.shape[0],), generator=g, device=x0.device)
    z = _noisy(x0, randn_like(x0, g), times[i], acp)
    x_tilde, _ = teacher_target(teacher, z, times[i], times[i + 1], acp)
    return _weighted(student, z, times[i], x_tilde, acp)


@torch.no_grad()
def heldout(student: DiffusionModel, teacher: DiffusionModel, x0, eps, grid: list[int], acp) -> dict:
    """Held-out error on a fixed batch (item j at step j mod K): MSE of the student's one step against
    the teacher's two, and the weighted loss."""
    times = torch.tensor(grid, device=x0.device)
    i = torch.arange(x0.shape[0], device=x0.device) % (len(grid) - 1)
    z = _noisy(x0, eps, times[i], acp)
    x_tilde, z_teacher = teacher_target(teacher, z, times[i], times[i + 1], acp)
    d = _ddim(student, z, times[i], times[i + 1], acp)[0] - z_teacher
    d = torch.view_as_real(d) if d.is_complex() else d
    return {"heldout_mse": float(d.square().mean()), "heldout_loss": float(_weighted(student, z, times[i], x_tilde, acp))}


@dataclass
class DistillResult:
    student: DiffusionModel
    grid: list[int]
    rounds: list[dict]
    checkpoint: Path


def _frozen(model: DiffusionModel, state=None) -> DiffusionModel:
    m = DiffusionModel(copy.deepcopy(model.net), model.schedule, model.prediction_type, model.network_config)
    if state is not None:
        m.net.load_state_dict(state)
    return m.eval().requires_grad_(False)


def restore(ck, student: DiffusionModel, opt, ema) -> int:
    """Load a run checkpoint's weights, optimizer and EMA into the training state; its step."""
    student.net.load_state_dict(ck.model.net.state_dict())
    opt.load_state_dict(ck.optimizer)
    if ema is not None:
        ema.load_state_dict(ck.ema)
    return ck.step


def save_pruned(folder: Path, student: DiffusionModel, config: dict, ema, opt, step: int, keep: int) -> Path:
    """``folder/step-XXXXXXXX`` (model, EMA, optimizer), keeping the last ``keep`` such checkpoints."""
    path = save_checkpoint(folder / f"step-{step:08d}", student, config, ema=ema.shadow if ema else None, step=step,
                           optimizer=opt, overwrite=True)
    old = sorted(p for p in folder.iterdir() if CHECKPOINT_NAME.match(p.name))
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return path


def optimizer_step(student: DiffusionModel, opt, ema, loss: torch.Tensor, grad_clip: float | None) -> None:
    """Backpropagate ``loss``, clip the gradient norm (``grad_clip``), step ``opt``, update ``ema``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(student.net.parameters(), grad_clip)
    opt.step()
    if ema is not None:
        ema.update(student.net)


def _plan(out: Path, plan: dict, resume: bool, overwrite: bool) -> None:
    """Write ``plan.json``, or check a rerun against it (module docstring)."""
    file = out / PLAN
    if file.is_file() and not resume:
        if not overwrite:
            raise FileExistsError(f"out_dir: {out} holds a distillation run; resume it or pass overwrite=True")
        for p in out.iterdir():
            if p.name.startswith("round-") or p.name in (STUDENT, PLAN):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    if file.is_file():
        old = json.loads(file.read_text())
        diff = sorted(k for k in plan.keys() | old.keys() if old.get(k) != plan.get(k))
        if diff:
            raise ValueError(f"{file}: this run was started with other settings ({', '.join(diff)}: "
                             f"{[old.get(k) for k in diff]} there, {[plan.get(k) for k in diff]} now); "
                             f"use another out_dir or overwrite")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{PLAN}.tmp"
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, file)


def distill(teacher: DiffusionModel, dataset, out_dir, *, target_steps: int, teacher_steps: int | None = None,
            steps_per_round: int = 2000, batch_size: int = 8, lr: float = 5e-5, ema_decay: float | None = None,
            grad_clip: float | None = 1.0, val_items: int = 8, save_every: int | None = None, keep: int = 2,
            teacher_name: str = "", seed: int = 0, device=None, resume: bool = True, overwrite: bool = False,
            progress: bool = True) -> DistillResult:
    """Distil ``teacher`` (a VP ``DiffusionModel`` with ``network_config``) round by round into a
    ``target_steps``-step student (module docstring); ``dataset[i]`` as for ``models.train.train``."""
    betas = getattr(teacher.schedule, "betas", None)
    if betas is None or teacher.prediction_type == "score" or teacher.network_config is None:
        raise ValueError(f"teacher: expected a VP eps / x0 / v model with a network_config, got a "
                         f"{teacher.prediction_type!r} model on {type(teacher.schedule).__name__}")
    if min(steps_per_round, batch_size) < 1 or val_items < 1 or len(dataset) <= val_items:
        raise ValueError(f"steps_per_round, batch_size, val_items: expected >= 1 and fewer held-out items than the "
                         f"{len(dataset)} of the dataset, got {steps_per_round}, {batch_size}, {val_items}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grids = round_grids(target_steps, teacher_steps or default_teacher_steps(target_steps), len(betas))
    out = Path(out_dir)
    cfg = {"steps_per_round": steps_per_round, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
           "grad_clip": grad_clip, "seed": seed}
    _plan(out, {"teacher": teacher_name, "target_steps": int(target_steps), "teacher_steps": len(grids[0]) - 1,
                "grids": grids, "val_items": val_items, **cfg}, resume, overwrite)
    acp = abar_table(betas).to(device)
    n_train = len(dataset) - val_items
    x_val = to_model_input(torch.stack([torch.as_tensor(dataset[j]) for j in range(n_train, len(dataset))]).to(device),
                           teacher.in_channels)
    eps_val = randn_like(x_val, step_generator(seed, 0, 0xFFFF_FFFF, device))
    current, rounds = _frozen(teacher), []
    current.net.to(device)
    for r in range(1, len(grids)):
        grid, rdir = grids[r], out / f"round-{r:02d}"
        info = {"steps": len(grid) - 1, "grid": grid, "teacher": teacher_name, "teacher_grid": grids[r - 1]}
        last = latest_checkpoint(rdir)
        ck = load_checkpoint(last, device, teacher.prediction_type) if last is not None else None
        if ck is not None and ck.step >= steps_per_round:  # finished: its student teaches the next round
            rounds = ck.extra["distilled"]["rounds"]
            current = _frozen(ck.model, ck.ema)
            continue
        student = _frozen(current).requires_grad_(True).train()
        opt = torch.optim.AdamW(student.net.parameters(), lr=lr, weight_decay=0.0)
        ema = EMA(student.net, ema_decay) if ema_decay else None
        start = 0
        if ck is not None:
            start, before = restore(ck, student, opt, ema), ck.extra["round_state"]["before"]
        else:
            before = heldout(current, current, x_val, eps_val, grid, acp)
        rdir.mkdir(parents=True, exist_ok=True)

        def save(step: int, record: dict | None = None) -> Path:
            done = rounds + ([record] if record else [])
            return save_pruned(rdir, student, {
                "network": teacher.network_config, "objective": "distill", **cfg, "round": r,
                "distilled": {**info, "rounds": done}, "round_state": {"before": before}}, ema, opt, step, keep)

        pbar = None
        if progress:
            from tqdm.auto import tqdm
            pbar = tqdm(total=steps_per_round, initial=start, desc=f"round {r} ({len(grid) - 1} steps)")
        with open(rdir / "log.jsonl", "a") as log:
            for step in range(start, steps_per_round):
                g = step_generator(seed, r, step, device)
                idx = torch.randint(0, n_train, (batch_size,), generator=g, device=device).tolist()
                x0 = to_model_input(torch.stack([torch.as_tensor(dataset[i]) for i in idx]).to(device),
                                    student.in_channels)
                loss = distill_loss(student, current, x0, grid, acp, g)
                optimizer_step(student, opt, ema, loss, grad_clip)
                log.write(json.dumps({"step": step + 1, "loss": float(loss.detach())}) + "\n")
                if pbar is not None:
                    pbar.update(1)
                if save_every and (step + 1) % save_every == 0 and step + 1 < steps_per_round:
                    log.flush()
                    save(step + 1)
            result = _frozen(student, ema.shadow if ema else None)
            after = heldout(result, current, x_val, eps_val, grid, acp)
            record = {"round": r, "steps": len(grid) - 1, "teacher_steps": len(grids[r - 1]) - 1,
                      "train_steps": steps_per_round, **{f"{k}_before": v for k, v in before.items()}, **after}
            log.write(json.dumps(record) + "\n")
        if pbar is not None:
            pbar.close()
        save(steps_per_round, record)
        rounds, current = rounds + [record], result
    final = {"network": teacher.network_config, "objective": "distill", **cfg,
             "distilled": {**info, "rounds": rounds}}
    path = save_checkpoint(out / STUDENT, current, final, overwrite=True)
    return DistillResult(student=current, grid=grids[-1], rounds=rounds, checkpoint=path)
