import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "cpu",
    "description": "2-D max pooling (kernel 3, stride 2, padding 1) of an NCHW float32 tensor.",
    "variants": [{"batch_size": 3, "channels": 5, "height": 33, "width": 47},
                 {"batch_size": 1, "channels": 2, "height": 2, "width": 7}],
    "seeds": ["seeds/maxpool2d_seed.py"],
}

batch_size = 4
channels = 32
height = 56
width = 56
kernel_size = 3
stride = 2
padding = 1


class Model(nn.Module):
    def __init__(self, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


def get_inputs():
    return [torch.randn(batch_size, channels, height, width)]


def get_init_inputs():
    return [kernel_size, stride, padding]
