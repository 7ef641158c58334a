import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "cpu",
    "description": "One Adam step (L2 weight decay folded into the gradient, as torch.optim.Adam), "
                   "fused: returns (new_param, new_exp_avg, new_exp_avg_sq) and leaves its inputs as they were.",
    "variants": [{"rows": 37, "cols": 129}, {"rows": 1, "cols": 1001}],
    "seeds": ["seeds/adam_seed.py"],
}

rows = 512
cols = 512
lr = 1e-3
beta1 = 0.9
beta2 = 0.999
eps = 1e-8
weight_decay = 1e-2
step = 10


class Model(nn.Module):
    def __init__(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int):
        super().__init__()
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay, self.step = weight_decay, step

    def forward(self, param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grad = grad + self.weight_decay * param
        exp_avg = self.beta1 * exp_avg + (1.0 - self.beta1) * grad
        exp_avg_sq = self.beta2 * exp_avg_sq + (1.0 - self.beta2) * grad * grad
        bias_correction1 = 1.0 - self.beta1 ** self.step
        bias_correction2 = 1.0 - self.beta2 ** self.step
        denom = exp_avg_sq.sqrt() / bias_correction2 ** 0.5 + self.eps
        new_param = param - (self.lr / bias_correction1) * exp_avg / denom
        return new_param, exp_avg, exp_avg_sq


def get_inputs():
    param = torch.randn(rows, cols)
    grad = torch.randn(rows, cols)
    exp_avg = 0.1 * torch.randn(rows, cols)
    exp_avg_sq = 0.01 * torch.rand(rows, cols)  # second moments are never negative
    return [param, grad, exp_avg, exp_avg_sq]


def get_init_inputs():
    return [lr, beta1, beta2, eps, weight_decay, step]
