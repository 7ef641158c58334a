import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "Host-to-device streaming with compute: a float32 input in pinned host memory "
                   "(CHUNKS x CHUNK) is copied to the GPU and mapped elementwise through "
                   "y = P(tanh(x)), P a degree-DEGREE polynomial (Horner, coefficients 1/(i+1)); "
                   "the result stays on the GPU. The reference copies and computes chunk by chunk "
                   "on one stream, so copies and kernels never overlap; eager compute per chunk "
                   "takes about as long as the chunk's copy.",
    "devices": ["cuda"],
    "input_devices": ["pinned"],
    "compile_reference": False,
    "variants": [{"CHUNKS": 3, "CHUNK": 1000}, {"CHUNKS": 1, "CHUNK": 4099}, {"CHUNKS": 5, "CHUNK": 77777}],
    "seeds": ["seeds/offload_overlap_seed.py"],
    "flops": 1207959552,  # 2 DEGREE + ~4 per element (tanh counted as 4)
    "bytes": 268435456,  # 128 MB over the bus, 128 MB written on the GPU
}

CHUNKS = 8
CHUNK = 1 << 22  # 16 MB of float32 per chunk
DEGREE = 16


class Model(nn.Module):
    def __init__(self, degree: int):
        super().__init__()
        # a buffer, so that Model.to(device) says where the result goes (the input stays on the host)
        self.register_buffer("coeffs", 1.0 / torch.arange(1, degree + 2, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=x.dtype, device=self.coeffs.device)
        c = self.coeffs
        n = c.numel() - 1
        for i in range(x.shape[0]):
            t = torch.tanh(x[i].to(out.device, non_blocking=True))
            y = c[n] * t + c[n - 1]
            for j in range(n - 2, -1, -1):
                y = y * t + c[j]
            out[i] = y
        return out


def get_inputs():
    return [torch.randn(CHUNKS, CHUNK)]


def get_init_inputs():
    return [DEGREE]
