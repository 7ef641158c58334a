import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "Optimizer-state offload: one AdamW step (decoupled weight decay, bias-corrected) "
                   "on float32 tensors that live in host memory, as ZeRO-Offload runs it on the CPU "
                   "while the GPU trains. forward(param, grad, exp_avg, exp_avg_sq) returns "
                   "(new_param, new_exp_avg, new_exp_avg_sq) on the host and leaves its inputs as they were.",
    "devices": ["cpu", "cuda"],
    "input_devices": ["cpu", "cpu", "cpu", "cpu"],
    "compile_reference": False,
    "variants": [{"N": 1001}, {"N": 77777}, {"N": 1}],
    "seeds": ["seeds/offload_cpu_adam_seed.py"],
    "flops": 134217728,  # ~16 per element
    "bytes": 234881024,  # 4 streams read, 3 written
}

N = 1 << 23  # 8M parameters: 32 MB per tensor
lr = 1e-3
beta1 = 0.9
beta2 = 0.999
eps = 1e-8
weight_decay = 0.01
step = 100


class Model(nn.Module):
    def __init__(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int):
        super().__init__()
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay, self.step = weight_decay, step

    def forward(self, param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        new_m = exp_avg * self.beta1 + grad * (1.0 - self.beta1)
        new_v = exp_avg_sq * self.beta2 + grad * grad * (1.0 - self.beta2)
        m_hat = new_m / (1.0 - self.beta1 ** self.step)
        v_hat = new_v / (1.0 - self.beta2 ** self.step)
        new_p = param * (1.0 - self.lr * self.weight_decay) - self.lr * m_hat / (v_hat.sqrt() + self.eps)
        return new_p, new_m, new_v


def get_inputs():
    param = torch.randn(N)
    grad = torch.randn(N)
    exp_avg = 0.1 * torch.randn(N)
    exp_avg_sq = 0.01 * torch.rand(N)  # second moments are never negative
    return [param, grad, exp_avg, exp_avg_sq]


def get_init_inputs():
    return [lr, beta1, beta2, eps, weight_decay, step]
