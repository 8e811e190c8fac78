"""The momentum (EMA) teacher update: ``theta_t <- m theta_t + (1 - m) theta_s``, fused over all tensors.

Covers every parameter of the teacher, including frozen ones such as the weight-norm gain
``original0`` of the head's last layer (as the reference, which updates ``teacher.parameters()``);
buffers (e.g. BatchNorm running statistics) are not averaged.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class TeacherEMA:
    """Holds the matched parameter lists once; ``update(m)`` runs two fused foreach kernels."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        s_named = dict(student.named_parameters())
        t_named = dict(teacher.named_parameters())
        if s_named.keys() != t_named.keys():
            missing = sorted(set(s_named) ^ set(t_named))[:3]
            raise ValueError(f"student and teacher parameters differ: {missing}")
        names = list(t_named)
        self.student_params = [s_named[n] for n in names]
        self.teacher_params = [t_named[n] for n in names]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        t = self.teacher_params
        s = [p.detach() for p in self.student_params]
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1.0 - momentum)
