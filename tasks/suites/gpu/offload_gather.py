import torch
import torch.nn as nn

KERNELWRIGHT = {
    "suite": "gpu",
    "description": "Embedding/feature gather with the table offloaded to host memory: rows `idx` "
                   "(int64, on the GPU) of a float32 table (N_ROWS x DIM) kept in pinned host memory, "
                   "returned on the GPU. The reference moves the indices to the host, gathers there "
                   "and copies the rows up; the GPU can instead read the pinned table directly "
                   "(zero-copy over PCIe/NVLink-C2C).",
    "devices": ["cuda"],
    "input_devices": ["pinned", "device"],
    "compile_reference": False,
    "variants": [{"N_ROWS": 1000, "DIM": 33, "N_IDX": 77}, {"N_ROWS": 3000, "DIM": 64, "N_IDX": 5000},
                 {"N_ROWS": 10, "DIM": 128, "N_IDX": 1}],
    "seeds": ["seeds/offload_gather_seed.py"],
    "bytes": 67108864,  # the gathered rows cross the bus once and are written once on the GPU
}

N_ROWS = 1 << 20  # 512 MB of float32 rows
DIM = 128
N_IDX = 65536


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return table.index_select(0, idx.cpu()).to(idx.device)


def get_inputs():
    table = torch.randn(N_ROWS, DIM)
    idx = torch.randint(0, N_ROWS, (N_IDX,), dtype=torch.int64)
    return [table, idx]


def get_init_inputs():
    return []
