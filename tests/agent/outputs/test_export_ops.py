"""An exported package's custom ops and `apply`: real kernels of the cpu suite, in this process."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.agent.e2e_data import PACKAGE, loaded_package

PATTERNS = {"softmax": ("softmax", {}), "rmsnorm": ("rms_norm", {"eps": 1e-6}),
            "layernorm": ("layer_norm", {"eps": 1e-5}), "gelu_linear": ("gelu_linear", {}),
            "causal_attention": ("causal_attention", {})}


@pytest.fixture(scope="module")
def pkg(sandbox, tmp_path_factory):
    return loaded_package(sandbox, tmp_path_factory)


def ops():
    return getattr(torch.ops, PACKAGE)


def test_every_task_is_an_op_bound_to_the_pattern_its_reference_is(pkg):
    tasks = {e["task"]: e for e in pkg.manifest()["tasks"]}
    assert sorted(tasks) == sorted(PATTERNS)
    for task, (pattern, config) in PATTERNS.items():
        assert (tasks[task]["binding"]["pattern"], tasks[task]["binding"]["config"]) == (pattern, config)
    schema = str(ops().layernorm.default._schema)
    assert schema == f"{PACKAGE}::layernorm(Tensor x, Tensor norm_weight, Tensor norm_bias) -> Tensor"
    assert str(ops().causal_attention.default._schema).endswith("(Tensor q, Tensor k, Tensor v) -> Tensor")


def test_ops_run_the_kernel_with_a_modules_own_weights_and_shapes(pkg):
    torch.manual_seed(0)
    ln, lin, rms = nn.LayerNorm(300), nn.Linear(100, 70), nn.RMSNorm(77, eps=1e-6)
    for m in (ln, rms):
        nn.init.normal_(m.weight, 1.0, 0.5)
    nn.init.normal_(ln.bias, 0.0, 0.5)
    with torch.no_grad():
        x = torch.randn(37, 300)
        assert torch.allclose(ops().layernorm(x, ln.weight, ln.bias), ln(x), atol=1e-4, rtol=1e-4)
        assert pkg.last_path("layernorm") == "kernel"
        x = torch.randn(9, 100)
        assert torch.allclose(ops().gelu_linear(x, lin.weight, lin.bias), F.gelu(lin(x)), atol=1e-4, rtol=1e-4)
        assert pkg.last_path("gelu_linear") == "kernel"
        x = torch.randn(5, 77)
        assert torch.allclose(ops().rmsnorm(x, rms.weight), rms(x), atol=1e-4, rtol=1e-4)
        assert pkg.last_path("rmsnorm") == "kernel"


def test_calls_unlike_the_checked_ones_take_the_reference(pkg, monkeypatch):
    x = torch.randn(8, 300)
    with torch.no_grad():
        with pytest.raises(RuntimeError):  # the reference says what is wrong with these shapes
            ops().layernorm(x, torch.ones(200), torch.zeros(200))
        assert pkg.last_path("layernorm") == "reference"
        assert pkg.last_reason("layernorm").startswith("dims x[1], norm_weight[0], norm_bias[0] are [300, 200, 200]")
        q, kv = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 12, 16)  # cross attention: the kernel assumes one length
        got = ops().causal_attention(q, kv, kv)
        assert pkg.last_path("causal_attention") == "reference"
        assert "q[2], k[2], v[2]" in pkg.last_reason("causal_attention")
        assert torch.allclose(got, F.scaled_dot_product_attention(q, kv, kv, is_causal=True))
        y = ops().softmax(x.double())
        assert pkg.last_reason("softmax") == "x has dtype float64, the kernel takes float32"
        assert y.dtype == torch.float64 and torch.allclose(y, torch.softmax(x.double(), dim=-1))
        monkeypatch.setenv(f"{PACKAGE.upper()}_FORCE_REFERENCE", "1")
        ops().softmax(x)
        assert pkg.last_path("softmax") == "reference"
    with pytest.raises(RuntimeError, match=f"{PACKAGE}::softmax has no backward"):
        ops().softmax(x.requires_grad_())


def test_fake_implementations_give_shapes_without_running_a_kernel(pkg):
    from torch._subclasses.fake_tensor import FakeTensorMode

    before = pkg.path_counts()
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(6, 50))
        out = ops().gelu_linear(x, mode.from_tensor(torch.randn(30, 50)), mode.from_tensor(torch.randn(30)))
    assert out.shape == (6, 30) and out.dtype == torch.float32
    assert pkg.path_counts() == before


def test_torch_compile_fullgraph_calls_the_ops(pkg):
    ln = nn.LayerNorm(64)

    def f(x):
        return torch.ops.kwe2e.softmax(x) * 2 + torch.ops.kwe2e.layernorm(x, ln.weight, ln.bias)

    compiled = torch.compile(f, fullgraph=True)
    x = torch.randn(16, 64)
    with torch.no_grad():
        before = pkg.path_counts()
        got = compiled(x)
        after = pkg.path_counts()
        assert torch.allclose(got, torch.softmax(x, -1) * 2 + ln(x), atol=1e-4, rtol=1e-4)
    for task in ("softmax", "layernorm"):
        assert after[task]["kernel"] == before.get(task, {}).get("kernel", 0) + 1


def test_torch_export_keeps_the_op_in_the_graph(pkg):
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(32)

        def forward(self, x):
            return torch.ops.kwe2e.layernorm(x, self.ln.weight, self.ln.bias) + 1

    m, x = Norm().eval(), torch.randn(4, 32)
    with torch.no_grad():
        ep = torch.export.export(m, (x,))
        assert "torch.ops.kwe2e.layernorm.default" in ep.graph_module.code
        assert torch.allclose(ep.module()(x), m.ln(x) + 1, atol=1e-4, rtol=1e-4)
    assert pkg.last_path("layernorm") == "kernel"


class Attention(nn.Module):
    def forward(self, x):
        b, s, d = x.shape
        q = k = v = x.view(b, s, 2, d // 2).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, d)


class LlamaRMSNorm(nn.Module):
    """An RMSNorm-style module of another library: replaced only when named in rms_norm_types."""

    def __init__(self, dim, eps=1e-6, wrong=False):
        super().__init__()
        self.weight, self.variance_epsilon, self.wrong = nn.Parameter(torch.ones(dim)), eps, wrong

    def forward(self, x):
        scale = 1.0 if self.wrong else torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return x * scale * self.weight


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(64)
        self.ln_other = nn.LayerNorm(64, eps=1e-3)  # another configuration: no kernel for it
        self.rms = nn.RMSNorm(64, eps=1e-6)
        self.llama, self.wrong = LlamaRMSNorm(64), LlamaRMSNorm(64, wrong=True)
        self.mlp = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64))
        self.tanh = nn.Sequential(nn.Linear(64, 64), nn.GELU(approximate="tanh"))  # not the exact GELU
        self.attn, self.soft = Attention(), nn.Softmax(dim=-1)

    def forward(self, x):
        h = self.wrong(self.llama(self.rms(self.ln_other(self.ln(x)))))
        h = self.attn(self.tanh(self.mlp(h)))
        return self.soft(h), torch.softmax(h * 2, dim=-1)


def test_apply_replaces_what_the_kernels_compute_and_restore_undoes_it(pkg):
    torch.manual_seed(0)
    model = Toy().eval()
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm, LlamaRMSNorm)):
            nn.init.normal_(m.weight, 1.0, 0.3)
    plain, x = copy.deepcopy(model), torch.randn(2, 8, 64)
    keys = list(model.state_dict())
    applied = pkg.apply(model, rms_norm_types=(LlamaRMSNorm,))
    assert {(r.path, r.replaced, r.task) for r in applied} == {
        ("ln", "LayerNorm", "layernorm"), ("rms", "RMSNorm", "rmsnorm"), ("llama", "LlamaRMSNorm", "rmsnorm"),
        ("mlp.0", "nn.Linear + nn.GELU", "gelu_linear"), ("soft", "Softmax", "softmax"),
        ("attn", "scaled_dot_product_attention calls", "causal_attention"), ("", "softmax calls", "softmax")}
    skipped = dict(applied.skipped)
    assert skipped["ln_other"] == "layernorm: eps 0.001, the kernel's is 1e-05"
    assert skipped["wrong"].startswith("rmsnorm: the kernel differs from the module on a probe input")
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        before = pkg.path_counts()
        got, want = model(x), plain(x)
        after = pkg.path_counts()
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-4, rtol=1e-4)
    ran = {t: after[t]["kernel"] - before.get(t, {}).get("kernel", 0) for t in after}
    assert ran == {"layernorm": 1, "rmsnorm": 2, "gelu_linear": 1, "softmax": 2, "causal_attention": 1}
    # with gradients needed every replaced module runs its own forward: autograd works, no kernel runs
    out = model(x)[0].sum()
    out.backward()
    assert model.ln.weight.grad is not None and pkg.path_counts() == after
    assert pkg.restore(model) == 7 and all("forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert all(torch.equal(g, w) for g, w in zip(model(x), plain(x)))
    assert pkg.path_counts() == after


def test_apply_leaves_modules_the_kernel_cannot_take(pkg):
    model = nn.Sequential(nn.LayerNorm(64).double(), nn.Linear(64, 64, bias=False), nn.GELU())
    applied = pkg.apply(model)
    assert list(applied) == []
    assert dict(applied.skipped) == {
        "0": "layernorm: the kernel did not run on a probe input: x has dtype float64, the kernel takes float32",
        "1": "nn.Linear without a bias"}
