"""Schedules, EMA, optimizer groups, clipping, checkpoints, diagnostics and launch detection,
each against a direct (loop-based) implementation of the formula or the documented behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from dino_pipe import distributed as D
from dino_pipe.config import Config, ModelConfig, OptimConfig
from dino_pipe.errors import UserError
from dino_pipe.models import create_student_teacher
from dino_pipe.runs.checkpoint_file import load_checkpoint, save_checkpoint
from dino_pipe.runs.run_dir import find_checkpoint, list_checkpoints
from dino_pipe.train.checkpoint import rng_state, set_rng_state
from dino_pipe.train.diagnostics import CollapseMonitor
from dino_pipe.train.ema import TeacherEMA
from dino_pipe.train.optim import LARS, build_optimizer, cancel_last_layer_grads, clip_gradients, param_groups
from dino_pipe.train.schedules import Schedules, cosine_schedule, teacher_temp_schedule

TINY = ModelConfig(arch="vit_tiny_patch16_224", arch_kwargs={"img_size": 32, "patch_size": 8, "depth": 1},
                   out_dim=32, hidden_dim=32, bottleneck_dim=16)


# -- schedules --------------------------------------------------------------------------------


def direct_cosine(base, final, epochs, spe, warmup_epochs, start=0.0):
    total, w = epochs * spe, warmup_epochs * spe
    out = []
    for i in range(total):
        if i < w:
            out.append(start + (base - start) * i / (w - 1) if w > 1 else base)
        else:
            j, n = i - w, total - w
            out.append(final + 0.5 * (base - final) * (1 + math.cos(math.pi * j / n)))
    return out


@pytest.mark.parametrize(
    "base,final,epochs,spe,warm", [(1e-3, 1e-6, 7, 5, 2), (0.996, 1.0, 3, 4, 0), (0.04, 0.4, 1, 9, 0)]
)
def test_cosine_schedule_matches_direct(base, final, epochs, spe, warm):
    got = cosine_schedule(base, final, epochs, spe, warmup_epochs=warm)
    want = direct_cosine(base, final, epochs, spe, warm)
    assert len(got) == len(want)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-12
    if warm:
        assert got[0] == 0.0 and got[warm * spe - 1] == pytest.approx(base)


def test_teacher_temp_and_lr_scaling():
    t = teacher_temp_schedule(0.04, 0.07, 30, 100)
    assert len(t) == 100 and t[0] == 0.04 and t[29] == pytest.approx(0.07) and all(t[30:] == 0.07)
    assert t[10] == pytest.approx(0.04 + 0.03 * 10 / 29)
    cfg = Config()
    cfg.optim.warmup_epochs = 1
    sch = Schedules.from_config(cfg, steps_per_epoch=10, global_batch=1024)
    assert sch.lr.max() == pytest.approx(5e-4 * 1024 / 256)  # linear scaling rule
    assert sch.at(0)["momentum"] == pytest.approx(0.996) and sch.momentum[-1] < 1.0
    assert sch.at(15)["teacher_temp"] == 0.04


# -- EMA --------------------------------------------------------------------------------------


def test_ema_update_matches_formula_and_covers_weight_norm():
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.__dict__, "norm_last_layer": False})
    student, teacher = create_student_teacher(cfg)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s = student.state_dict()
    TeacherEMA(student, teacher).update(0.9)
    after = teacher.state_dict()
    names = dict(teacher.named_parameters())
    assert "head.last_layer.parametrizations.weight.original0" in names
    assert "head.last_layer.parametrizations.weight.original1" in names
    for k in names:
        torch.testing.assert_close(after[k], 0.9 * before[k] + 0.1 * s[k], atol=1e-6, rtol=1e-6)
    assert all(not p.requires_grad for p in teacher.parameters())


# -- optimizer, clipping, freezing ------------------------------------------------------------


def test_param_groups_no_decay_on_bias_and_norm():
    torch.manual_seed(0)
    student, _ = create_student_teacher(TINY)
    reg, no_reg = param_groups(student)
    names = {id(p): n for n, p in student.named_parameters()}
    assert all(not names[id(p)].endswith(".bias") and p.ndim > 1 for p in reg["params"])
    assert all(names[id(p)].endswith(".bias") or p.ndim <= 1 for p in no_reg["params"])
    assert no_reg["weight_decay"] == 0.0
    gain = student.head.last_layer.parametrizations.weight.original0
    assert all(p is not gain for p in reg["params"] + no_reg["params"])  # frozen: not optimized
    n_trainable = sum(1 for p in student.parameters() if p.requires_grad)
    assert len(reg["params"]) + len(no_reg["params"]) == n_trainable
    for name in ("adamw", "sgd", "lars"):
        opt = build_optimizer(student, OptimConfig(optimizer=name))
        assert len(opt.param_groups) == 2


def test_clipping_per_param_and_global():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    grads = [torch.randn_like(p) * s for p, s in zip(m.parameters(), (10, 0.1, 5, 0.01))]
    for p, g in zip(m.parameters(), grads):
        p.grad = g.clone()
    clip_gradients(m, 1.0, "per_param")
    for p, g in zip(m.parameters(), grads):
        n = float(g.norm())
        coef = 1.0 / (n + 1e-6)
        want = g * coef if coef < 1 else g
        torch.testing.assert_close(p.grad, want)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    for p, q, g in zip(m.parameters(), ref.parameters(), grads):
        p.grad, q.grad = g.clone(), g.clone()
    total = clip_gradients(m, 1.0, "global")
    want_total = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    torch.testing.assert_close(total, want_total)
    for p, q in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)


def test_last_layer_grads_cancelled_in_first_epoch():
    torch.manual_seed(0)
    student, _ = create_student_teacher(TINY)
    for p in student.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    cancel_last_layer_grads(student, epoch=1, freeze_epochs=1)
    assert student.head.last_layer.parametrizations.weight.original1.grad is not None
    cancel_last_layer_grads(student, epoch=0, freeze_epochs=1)
    assert student.head.last_layer.parametrizations.weight.original1.grad is None
    assert student.head.mlp[0].weight.grad is not None


def test_lars_step_matches_direct():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4))
    b = torch.nn.Parameter(torch.randn(3))
    gw, gb = torch.randn(3, 4), torch.randn(3)
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt = LARS([{"params": [w, b]}], lr=0.1, weight_decay=0.01, momentum=0.9, eta=0.001)
    w.grad, b.grad = gw, gb
    opt.step()
    d = gw + 0.01 * w0
    d = d * (0.001 * w0.norm() / d.norm())
    torch.testing.assert_close(w.detach(), w0 - 0.1 * d)
    torch.testing.assert_close(b.detach(), b0 - 0.1 * gb)  # 1-d: no decay, no trust ratio


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_roundtrip_keep_last_and_errors(tmp_path):
    torch.manual_seed(0)
    student, teacher = create_student_teacher(TINY)
    torch.manual_seed(123)
    state = {
        "config": Config().to_dict(),
        "epoch": 0,
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "objective": {"dino.center": torch.randn(1, 32)},
        "rng": rng_state(),
        "data": {"epoch": 0, "step": 3},
    }
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, {**state, "step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006.pt", "step-00000008.pt"]
    assert find_checkpoint(tmp_path).name == "step-00000008.pt"
    assert find_checkpoint(tmp_path / "checkpoints").name == "step-00000008.pt"
    ck = load_checkpoint(tmp_path)  # weights_only=True inside
    assert ck["format"] == "dino-pipe-checkpoint" and ck["version"] == 1 and ck["step"] == 8
    assert all(torch.equal(ck["student"][k], v) for k, v in student.state_dict().items())
    assert any(k.startswith("backbone.") for k in ck["teacher"]) and any(k.startswith("head.") for k in ck["teacher"])
    # RNG states survive weights_only loading and restore the stream exactly
    expected = torch.rand(5)
    torch.manual_seed(999)
    set_rng_state(ck["rng"])
    assert torch.equal(torch.rand(5), expected)
    with pytest.raises(UserError, match="no checkpoints"):
        find_checkpoint(_empty(tmp_path))
    with pytest.raises(UserError, match="no such"):
        find_checkpoint(tmp_path / "nope")
    bad = tmp_path / "checkpoints" / "step-00000010.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(tmp_path)
    torn = tmp_path / "torn.pt"
    torn.write_bytes((tmp_path / "checkpoints" / "step-00000008.pt").read_bytes()[:1000])
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(torn)


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


# -- diagnostics ------------------------------------------------------------------------------


def test_collapse_monitor_flags_uniform_and_onehot():
    k = 50
    mon = CollapseMonitor(k)
    mon.observe(torch.full((8, k), 1.0 / k))
    stats = mon.summary()
    assert stats["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-5)
    assert "uniform" in mon.warning(stats)
    onehot = torch.zeros(8, k)
    onehot[:, 3] = 1.0
    mon.observe(onehot)
    stats = mon.summary()
    assert stats["prototypes_used"] == 1 and stats["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert "one-hot" in mon.warning(stats)
    torch.manual_seed(0)
    mon.observe(torch.softmax(torch.randn(64, k) / 0.1, -1))
    stats = mon.summary()
    assert mon.warning(stats) is None and stats["prototypes_used"] > 10


# -- launch detection -------------------------------------------------------------------------


def test_launch_env_torchrun_slurm_local():
    assert D.launched_env(0, {}) is None
    env = D.launched_env(0, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                             "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher, env.backend) == \
        (3, 8, 1, "node7", 1234, "torchrun", "gloo")
    env = D.launched_env(0, {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5",
                             "SLURM_JOB_NODELIST": "gpu-a", "SLURM_JOB_ID": "4242"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.launcher) == (5, 16, 5, "gpu-a", "slurm")
    # an interactive allocation (one task) is a local launch
    assert D.launched_env(0, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--gpus 2 requested but 0 CUDA devices"):
            D.check_local_request(2, 1)
        with pytest.raises(UserError, match="GPU"):
            D.launched_env(8, {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert D.check_local_request(0, 3) == ("cpu", 3)


def test_partial_collapse_fires_only_when_sustained():
    from dino_pipe.train.diagnostics import PartialCollapseWatch

    k = 1024
    mon, watch = CollapseMonitor(k), PartialCollapseWatch(k, sustain=3)
    few = torch.zeros(64, k)
    few[torch.arange(64), torch.arange(64) % 12] = 1.0  # every image one-hot on one of 12 prototypes
    few = 0.97 * few + 0.03 / k
    warnings = []
    for step in range(1, 7):
        mon.observe(few)
        stats = mon.summary()
        assert mon.warning(stats) is None  # not uniform, not one single prototype: the old checks stay silent
        warnings.append(watch.update(stats, step))
    assert warnings[:2] == [None, None] and warnings[3:5] == [None, None]
    assert "12 of 1024 prototypes" in warnings[2] and "since step 1" in warnings[2] and "teacher_temp" in warnings[2]
    assert warnings[5] is not None  # repeated while it lasts
    # a spread-out teacher resets the stretch; a sharp but diverse one does not count either
    torch.manual_seed(0)
    mon.observe(torch.softmax(torch.randn(640, k) / 0.01, -1))
    stats = mon.summary()
    assert stats["prototypes_used"] > 32 and watch.update(stats, 7) is None and watch.run == 0


def test_a_setting_added_after_a_run_was_made_counts_as_its_default_on_resume():
    """A checkpoint written before `loss.koleo_weight` / `model.pos_interp` existed resumes under the same
    config (missing keys are the defaults it was computed with); a non-default value is still a change."""
    import copy

    from dino_pipe.config import load_config
    from dino_pipe.runs.run_dir import config_differences

    new = load_config(None).to_dict()
    old = copy.deepcopy(new)
    del old["loss"]["koleo_weight"], old["loss"]["centering"], old["model"]["pos_interp"]
    assert config_differences(old, new) == []
    changed = load_config(None, ["loss.koleo_weight=0.1"]).to_dict()
    assert config_differences(old, changed) == ["loss.koleo_weight: 0.0 -> 0.1"]
