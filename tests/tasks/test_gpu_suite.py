"""The built-in `gpu` suite, checked as far as a machine without a GPU allows.

Here: every task loads, its reference runs on CPU, every seed declares a valid knob space and
passes the static screen, the CUDA seeds compile with nvcc for sm_90, the C++ seed matches its
reference, the Triton seeds run under Triton's CPU interpreter (fp16/fp32 stand-ins for bf16,
which the interpreter gets wrong) and their default configurations compile for sm_90 with
Triton's own compiler, within the H100's shared memory. On an NVIDIA GPU (marked gpu) every seed
is compared with its reference on the task's own shapes; KW_GPU_ALL_KNOBS=1 adds every knob
configuration on a small variant, and `-s` shows rough seed/reference timings.
"""
from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from evaluator import static
from sandbox import fastpath
from sandbox.compiler import CompilerConfig, CompileSpec, build
from tasks.spec import apply_variant, load_task

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "tasks" / "suites" / "gpu"
TASKS = sorted(p.stem for p in SUITE.glob("*.py") if not p.name.startswith("_"))
REQUIRED = {"gemm_bf16", "gemm_fp16", "gemm_fp32", "gemm_skinny_bf16", "gemm_bias_gelu", "attention_prefill_d64",
            "attention_prefill_d128", "attention_decode", "offload_gather", "offload_overlap", "offload_cpu_adam"}
CUDA_SEEDS = ["offload_gather", "offload_overlap"]
CPP_SEEDS = ["offload_cpu_adam"]
TRITON_SEEDS = [t for t in TASKS if t not in CUDA_SEEDS + CPP_SEEDS]
H100_MAX_SHARED = 232448  # bytes of shared memory one block may opt into on sm_90
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _task(name: str):
    return load_task(SUITE / f"{name}.py")


def _seed_path(name: str) -> Path:
    paths = _task(name).seed_paths()
    assert len(paths) == 1
    return paths[0]


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- knob spaces (agent.loop.knobs when present, else a small reader of the same format) --------

def _space(source: str) -> tuple[list[dict], dict]:
    """(every valid configuration, the default configuration) of a seed's knobs."""
    try:
        from agent.loop.knobs import current, read_space
    except ImportError:
        return _space_by_ast(source)
    space = read_space(source)
    assert space is not None, "the seed declares no KNOBS"
    default = current(source)
    assert space.is_valid(default), space.violation(default)
    return list(space.configs()), default


def _space_by_ast(source: str) -> tuple[list[dict], dict]:
    consts = {n.targets[0].id: n.value for n in ast.parse(source).body
              if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}
    knobs = ast.literal_eval(consts["KNOBS"])
    rules = ast.literal_eval(consts["KNOB_CONSTRAINTS"]) if "KNOB_CONSTRAINTS" in consts else []
    for rule in rules:  # names, numbers and operators only
        for node in ast.walk(ast.parse(rule, mode="eval")):
            assert not isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)), rule
            assert not isinstance(node, ast.Name) or node.id in knobs, rule
    default = {k: ast.literal_eval(consts[k]) for k in knobs}

    def ok(cfg: dict) -> bool:
        return all(eval(compile(rule, "<knob>", "eval"), {"__builtins__": {}}, dict(cfg)) for rule in rules)

    configs = [dict(zip(knobs, vals)) for vals in itertools.product(*knobs.values())]
    assert ok(default) and all(default[k] in knobs[k] for k in knobs)
    return [c for c in configs if ok(c)], default


def _with_config(source: str, config: dict) -> str:
    try:
        from agent.loop.knobs import instantiate
    except ImportError:
        tree, lines = ast.parse(source), source.splitlines(keepends=True)
        for node in reversed(tree.body):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in config:
                lines[node.lineno - 1] = f"{node.targets[0].id} = {config[node.targets[0].id]!r}\n"
        return "".join(lines)
    return instantiate(source, config)


# --- tasks ----------------------------------------------------------------------------------

def test_suite_has_the_required_tasks():
    assert REQUIRED <= set(TASKS)


@pytest.mark.parametrize("name", TASKS)
def test_task_metadata(name: str):
    task = _task(name)
    assert task.meta.suite == "gpu" and task.meta.description
    assert "cuda" in task.meta.devices
    assert all(p.is_file() for p in task.seed_paths()) and task.seed_paths()
    assert set(task.meta.input_devices) <= {"device", "cpu", "pinned"}
    module = task.load_module()
    assert task.meta.variants
    for variant in task.meta.variants:
        assert variant and all(hasattr(module, k) for k in variant)
    for key in ("flops", "bytes"):
        value = getattr(task.meta, key)
        assert value is None or value > 0


def _inputs(module, variant, seed: int) -> tuple[list, list]:
    """(inputs, init inputs) of one shape variant, drawn under `seed`."""
    old = apply_variant(module, variant)
    try:
        torch.manual_seed(seed)
        return module.get_inputs(), module.get_init_inputs()
    finally:
        apply_variant(module, old)


def _smallest_variant(module, variants) -> dict:
    return min(variants, key=lambda v: sum(x.numel() for x in _inputs(module, v, 0)[0] if isinstance(x, torch.Tensor)))


@pytest.mark.parametrize("name", TASKS)
def test_reference_runs_on_cpu(name: str):
    task = _task(name)
    module = task.load_module()
    variant = _smallest_variant(module, task.meta.variants)
    inputs, init = _inputs(module, variant, 0)
    if task.meta.input_devices:
        assert len(task.meta.input_devices) == len(inputs)
    before = [x.clone() for x in inputs]
    with torch.no_grad():
        out = module.Model(*init)(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        assert isinstance(o, torch.Tensor) and o.numel()
        assert bool(torch.isfinite(o.float()).all())
        atol = task.meta.atol if task.meta.atol is not None else (1e-4 if o.dtype == torch.float32 else 1e-2)
        assert float(o.float().abs().max()) > atol  # zeros would not pass
        assert all(o.data_ptr() != x.data_ptr() for x in inputs)
    assert all(torch.equal(a, b) for a, b in zip(before, inputs))


# --- seeds: knobs and the static screen ------------------------------------------------------

@pytest.mark.parametrize("name", TASKS)
def test_seed_knob_space(name: str):
    configs, default = _space(_seed_path(name).read_text())
    assert 1 <= len(configs) <= 48
    assert default in configs


@pytest.mark.parametrize("name", TASKS)
def test_seed_passes_the_static_screen(name: str):
    source = _seed_path(name).read_text()
    assert static.screen(source) == []
    assert static.defines_modelnew(source)
    if name not in CPP_SEEDS:  # the ghost-kernel check needs kernel names to look for
        assert static.kernel_names(source)


# --- CUDA and C++ seeds --------------------------------------------------------------------

def _cuda_configs(name: str) -> list[dict]:
    """The default and the configuration with every knob at its largest value."""
    configs, default = _space(_seed_path(name).read_text())
    largest = max(configs, key=lambda c: tuple(c.values()))
    return [default] + ([largest] if largest != default else [])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("name, which", [(n, w) for n in CUDA_SEEDS for w in ("default", "largest")])
def test_cuda_seed_compiles_for_sm90(name: str, which: str, jobs):
    job = jobs["cuda"].get((name, which))
    if job is None:
        pytest.skip("the default is the largest configuration")
    config, result = job.result()
    assert result.ok, f"{config}:\n{result.log[-3000:]}"
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", result.log)]  # nvcc runs ptxas -v
    assert spills and not any(spills), f"{config}:\n{result.log}"


def _nvcc(name: str, config: dict, tmp_path: Path):
    module = _import_config(name, config, tmp_path)
    assert fastpath.prototypes(module.SRC), "no extern \"C\" launcher"
    # the seeds pass their knobs to nvcc as macros, nothing else
    defines = tuple(sorted((k, str(v)) for k, v in config.items()))
    return config, build(CompileSpec(source=module.SRC, lang="cuda", arch="sm_90", defines=defines),
                         CompilerConfig(cache_dir=tmp_path / "cache"))


def _import_config(name: str, config: dict, tmp_path: Path):
    path = tmp_path / f"{name}_seed.py"
    path.write_text(_with_config(_seed_path(name).read_text(), config))
    return _import(path, f"gpu_suite_{name}_{abs(hash(tuple(config.items())))}")


@pytest.mark.parametrize("name", CPP_SEEDS)
def test_cpp_seed_matches_its_reference(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KERNELWRIGHT_CACHE", str(tmp_path / "cache"))
    task = _task(name)
    module = task.load_module()
    configs, default = _space(_seed_path(name).read_text())
    for config in (default, min(configs, key=lambda c: tuple(c.values()))):
        seed = _import_config(name, config, tmp_path)
        for variant in task.meta.variants:
            inputs, init = _inputs(module, variant, 1)
            before = [x.clone() for x in inputs]
            with torch.no_grad():
                want = module.Model(*init)(*inputs)
                got = seed.ModelNew(*init)(*inputs)
            assert all(torch.equal(a, b) for a, b in zip(before, inputs))
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.shape == w.shape
                torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


# --- Triton seeds: the CPU interpreter and an sm_90 compile, each in its own process --------

_INTERPRET = r'''
import json, os, sys, importlib.util, time
import torch
import torch.nn.functional as F
import triton.runtime.interpreter as _interp

# Triton's interpreter turns a loop bound computed from program_id into int() of a one-element
# array, which numpy >= 2.3 refuses; read the element instead (interpreter only).
_orig_patch = _interp._patch_lang_tensor
def _patch_lang_tensor(tensor, scope):
    _orig_patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
_interp._patch_lang_tensor = _patch_lang_tensor

SEEDS = sys.argv[1]
results = []

def load(name, overrides):
    path = os.path.join(SEEDS, name + "_seed.py")
    spec = importlib.util.spec_from_file_location(f"interp_{name}_{len(results)}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for k, v in overrides.items():  # knob values, set the way the tuner's rewrite would
        assert hasattr(mod, k), k
        setattr(mod, k, v)
    return mod

def check(name, overrides, case, fn, ref, tol):
    t0 = time.time()
    try:
        got, want = fn(load(name, overrides)), ref()
        ok = got.shape == want.shape and got.dtype == want.dtype
        err = float((got.double() - want.double()).abs().max()) if ok else float("inf")
        ok = ok and bool(torch.allclose(got.double(), want.double(), atol=tol, rtol=tol))
        note = "" if ok else f"max abs error {err:.3g}, shape {tuple(got.shape)} {got.dtype}"
    except Exception as e:
        ok, err, note = False, float("inf"), f"{type(e).__name__}: {str(e)[:600]}"
    results.append({"seed": name, "config": overrides, "case": case, "ok": ok, "error": err, "note": note,
                    "seconds": round(time.time() - t0, 2)})

g = torch.Generator().manual_seed(0)
def rnd(*shape, dtype=torch.float16, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype)

TINY = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}  # many tiles: grouping, K tails
for name, dtype, tol, other in (
        ("gemm_bf16", torch.float16, 1e-2, {"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 32, "NUM_STAGES": 4}),
        ("gemm_fp16", torch.float16, 1e-2, {"BLOCK_M": 256, "BLOCK_N": 64}),
        ("gemm_fp32", torch.float32, 1e-4, {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 16})):
    cases = [((77, 130, 33), {}), ((77, 130, 33), other), ((1, 40, 70), {}), ((100, 40, 20), TINY)]
    for (m, n, k), cfg in cases:
        a, b = rnd(m, k, dtype=dtype), rnd(k, n, dtype=dtype, scale=k ** -0.5)
        check(name, cfg, f"{m}x{n}x{k}", lambda mod: mod.ModelNew()(a, b),
              lambda: (a.double() @ b.double()).to(dtype), tol)

for (m, n, k), cfg in (((77, 130, 33), {}), ((100, 40, 20), TINY)):
    x, w, b = rnd(m, k), rnd(k, n, scale=k ** -0.5), rnd(n)
    check("gemm_bias_gelu", cfg, f"{m}x{n}x{k}", lambda mod: mod.ModelNew()(x, w, b),
          lambda: F.gelu((x.double() @ w.double()).half().double() + b.double()).half(), 1e-2)

for (m, n, k), cfg in (((5, 300, 200), {}), ((5, 300, 200), {"SPLIT_K": 1, "BLOCK_N": 32, "BLOCK_K": 256}),
                       ((33, 70, 1000), {"SPLIT_K": 8, "BLOCK_N": 256, "BLOCK_K": 64}), ((1, 16, 16), {}),
                       ((20, 50, 100), {"SPLIT_K": 3, "BLOCK_N": 16, "BLOCK_K": 16, "REDUCE_BLOCK": 64})):
    a, b = rnd(m, k), rnd(k, n, scale=k ** -0.5)
    check("gemm_skinny_bf16", cfg, f"{m}x{n}x{k}", lambda mod: mod.ModelNew()(a, b),
          lambda: (a.double() @ b.double()).half(), 1e-2)

for d in (64, 128):
    for (bsz, h, s), cfg in (((1, 2, 77), {}), ((1, 1, 200), {}), ((1, 1, 200), {"BLOCK_M": 64, "BLOCK_N": 32}),
                             ((1, 1, 100), {"BLOCK_M": 32, "BLOCK_N": 16}), ((2, 1, 1), {})):
        q, k, v = rnd(bsz, h, s, d), rnd(bsz, h, s, d), rnd(bsz, h, s, d)
        check(f"attention_prefill_d{d}", cfg, f"B{bsz} H{h} S{s}", lambda mod: mod.ModelNew()(q, k, v),
              lambda: F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).half(), 1e-2)

for (bsz, h, s, d), cfg in (((1, 2, 300, 128), {}), ((1, 2, 300, 128), {"BLOCK_N": 32, "SPLIT_LEN": 128}),
                            ((1, 1, 200, 64), {"BLOCK_N": 16, "SPLIT_LEN": 48}), ((2, 1, 1, 64), {})):
    q, k, v = rnd(bsz, h, 1, d), rnd(bsz, h, s, d), rnd(bsz, h, s, d)
    check("attention_decode", cfg, f"B{bsz} H{h} S{s} D{d}", lambda mod: mod.ModelNew()(q, k, v),
          lambda: F.scaled_dot_product_attention(q.float(), k.float(), v.float()).half(), 1e-2)

print("RESULTS " + json.dumps(results))
'''

_SM90 = r'''
import importlib.util, json, os, re, subprocess, sys, tempfile
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

sys.path.insert(0, os.getcwd())
from tasks.spec import apply_variant, load_task

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64", torch.int32: "i32"}
results, current = [], [None]

def compile_for_sm90(self, *args, grid, warmup, **kwargs):
    """Stands in for JITFunction.run: specializes the arguments as the launcher would and
    compiles for sm_90 instead of launching."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in ("num_warps", "num_stages", "num_ctas", "maxnreg")}
    bound = dict(zip(self.arg_names, args), **kwargs)
    signature, constants, attrs = {}, {}, {}
    for i, p in enumerate(self.params):
        v = bound[p.name]
        if p.is_constexpr or (isinstance(v, int) and not isinstance(v, bool) and v == 1 and not p.do_not_specialize):
            signature[p.name], constants[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[p.name] = "*" + DTYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            signature[p.name] = "i1"
        elif isinstance(v, int):
            signature[p.name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
            if v % 16 == 0 and not p.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[p.name] = "fp32"
    entry = {"task": current[0], "kernel": self.__name__}
    try:
        kernel = triton.compile(ASTSource(self, signature, constexprs=constants, attrs=attrs),
                                target=GPUTarget("cuda", 90, 32), options=options)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", f.name],
                                   capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
        entry.update(ok=True, shared=kernel.metadata.shared, regs=int(m.group(1)) if m else -1,
                     stack=int(m.group(2)) if m else -1, wgmma="wgmma" in kernel.asm["ptx"])
    except Exception as e:
        entry.update(ok=False, note=f"{type(e).__name__}: {str(e)[:600]}")
    results.append(entry)

JITFunction.run = compile_for_sm90

for name in sys.argv[1:]:
    current[0] = name
    task = load_task(os.path.join("tasks", "suites", "gpu", name + ".py"))
    module = task.load_module()
    # the default shape's specialization (sizes divisible by 16 stay so, K loops stay loops) at a
    # size that is cheap to allocate: every size constant above 1024 becomes 1024
    small = {k: 1024 for k, v in vars(module).items() if k.isupper() and type(v) is int and v > 1024}
    old = apply_variant(module, small)
    try:
        torch.manual_seed(0)
        inputs, init = module.get_inputs(), module.get_init_inputs()
    finally:
        apply_variant(module, old)
    spec = importlib.util.spec_from_file_location("sm90_" + name, task.seed_paths()[0])
    seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed)
    seed.ModelNew(*init)(*inputs)
print("RESULTS " + json.dumps(results))
'''


def _run_script(script: str, args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, Path]:
    with open(log, "w") as out:  # a file, not a pipe: nothing blocks while no one reads
        proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    return proc, log


def _results(job: tuple[subprocess.Popen, Path], timeout: float) -> list[dict]:
    proc, log = job
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"timed out after {timeout:.0f} s")
    out = log.read_text(errors="replace")
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory):
    """The slow checks, started together so they share the cores: nvcc builds of the CUDA seeds
    (threads), the interpreter run and the sm_90 compile of the Triton seeds (one process each)."""
    pool = ThreadPoolExecutor(max_workers=2)
    started: dict = {"cuda": {}, "procs": {}}
    if shutil.which("nvcc"):
        for name in CUDA_SEEDS:
            for which, config in zip(("default", "largest"), _cuda_configs(name)):
                where = tmp_path_factory.mktemp(f"{name}_{which}")
                started["cuda"][(name, which)] = pool.submit(_nvcc, name, config, where)
    if HAS_TRITON:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        work = tmp_path_factory.mktemp("triton")
        env["TRITON_CACHE_DIR"] = str(work / "cache")
        started["procs"]["interpret"] = _run_script(_INTERPRET, [str(SUITE / "seeds")],
                                                    {**env, "TRITON_INTERPRET": "1"}, work / "interpret.log")
        started["procs"]["sm90"] = _run_script(_SM90, TRITON_SEEDS, env, work / "sm90.log")
    yield started
    for proc, _ in started["procs"].values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def triton_runs(jobs):
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    return {kind: _results(proc, 600) for kind, proc in jobs["procs"].items()}


@pytest.mark.parametrize("name", TRITON_SEEDS)
def test_triton_seed_under_the_interpreter(name: str, triton_runs):
    mine = [r for r in triton_runs["interpret"] if r["seed"] == name]
    assert mine, f"no interpreter checks for {name}"
    bad = [r for r in mine if not r["ok"]]
    assert not bad, "\n".join(f"{r['case']} {r['config']}: {r['note']}" for r in bad)


@pytest.mark.parametrize("name", TRITON_SEEDS)
def test_triton_seed_compiles_for_sm90(name: str, triton_runs):
    mine = [r for r in triton_runs["sm90"] if r["task"] == name]
    assert mine, f"{name}: no kernel was launched"
    for r in mine:
        assert r["ok"], f"{r['kernel']}: {r.get('note')}"
        assert r["shared"] <= H100_MAX_SHARED, f"{r['kernel']} needs {r['shared']} bytes of shared memory"
    if name in ("gemm_bf16", "gemm_fp16", "gemm_bias_gelu", "attention_prefill_d64", "attention_prefill_d128"):
        assert all(r["wgmma"] for r in mine), "the tensor-core kernels should use Hopper's wgmma"


# --- on an NVIDIA GPU ----------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def _gpu_inputs(task, module, variant, seed: int) -> tuple[list, list]:
    """Inputs drawn on the GPU (as the evaluator draws them), then placed where the task says."""
    old = apply_variant(module, variant)
    try:
        torch.manual_seed(seed)
        with torch.device("cuda"):
            inputs = list(module.get_inputs())
        init = list(module.get_init_inputs())
    finally:
        apply_variant(module, old)
    places = task.meta.input_devices or ("device",) * len(inputs)
    placed = [x if where == "device" else x.cpu().pin_memory() if where == "pinned" else x.cpu()
              for x, where in zip(inputs, places)]
    return placed, init


def _compare(task, got, want, what: str) -> None:
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        assert g.device == w.device and g.dtype == w.dtype and g.shape == w.shape, (what, g.device, g.dtype, g.shape)
        atol = task.meta.atol if task.meta.atol is not None else (1e-4 if w.dtype == torch.float32 else 1e-2)
        rtol = task.meta.rtol if task.meta.rtol is not None else (1e-4 if w.dtype == torch.float32 else 1e-2)
        diff = (g.double() - w.double()).abs()
        bad = diff > atol + rtol * w.double().abs()
        assert not bool(bad.any()), \
            f"{what}: {int(bad.sum())} of {bad.numel()} outputs off, max {float(diff.max()):.3g}"


def _time_ms(fn, args, iters: int = 10) -> float:
    for _ in range(2):
        fn(*args)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", TASKS)
@pytest.mark.usefixtures("no_tf32")
def test_seed_matches_reference_on_gpu(name: str):
    task = _task(name)
    module = task.load_module()
    seed = _import(_seed_path(name), f"gpu_suite_seed_{name}")
    for i, variant in enumerate((None, *task.meta.variants)):
        inputs, init = _gpu_inputs(task, module, variant, seed=100 + i)
        ref, new = module.Model(*init).cuda().eval(), seed.ModelNew(*init).cuda().eval()
        before = [x.clone() for x in inputs]
        with torch.no_grad():
            want = ref(*inputs)
            got = new(*inputs)
            torch.cuda.synchronize()
            again = new(*inputs)  # twice: no state carried between calls
            torch.cuda.synchronize()
        what = f"{name} {variant or 'default'}"
        _compare(task, got, want, what)
        _compare(task, again, want, what + " (second call)")
        assert all(torch.equal(a, b) for a, b in zip(before, inputs)), f"{what}: an input changed"
        outs = got if isinstance(got, tuple) else (got,)
        assert all(o.data_ptr() != x.data_ptr() for o in outs for x in inputs), f"{what}: output aliases an input"
        if variant is None:
            with torch.no_grad():
                t_ref, t_new = _time_ms(ref, inputs), _time_ms(new, inputs)
            print(f"\n{name}: reference {t_ref:.3f} ms, seed {t_new:.3f} ms, speedup {t_ref / t_new:.2f}x "
                  f"({torch.cuda.get_device_name()}, no L2 flush, same inputs)")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", TASKS)
@pytest.mark.usefixtures("no_tf32")
def test_every_knob_configuration_on_gpu(name: str, tmp_path: Path):
    if os.environ.get("KW_GPU_ALL_KNOBS") != "1":
        pytest.skip("set KW_GPU_ALL_KNOBS=1 (compiles every configuration: minutes)")
    task = _task(name)
    module = task.load_module()
    variant = task.meta.variants[0]
    inputs, init = _gpu_inputs(task, module, variant, seed=5)
    with torch.no_grad():
        want = module.Model(*init).cuda()(*inputs)
    configs, _ = _space(_seed_path(name).read_text())
    failures = []
    for config in configs:
        t0 = time.time()
        seed = _import_config(name, config, tmp_path)
        with torch.no_grad():
            got = seed.ModelNew(*init).cuda()(*inputs)
        torch.cuda.synchronize()
        try:
            _compare(task, got, want, f"{name} {config}")
        except AssertionError as e:
            failures.append(str(e))
        print(f"{name} {config}: {time.time() - t0:.1f} s")
    assert not failures, "\n".join(failures)
