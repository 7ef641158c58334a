"""load_inline builds go through the supervisor (sandbox/extension.py), so the process and the
docker sandbox give a load_inline candidate the same verdict, and the image needs no compiler.

Two torch extension builds in all (about 26 s each here): one good source, one broken, each
shared by every test below through the cache (the second sandbox to see a source hits it).
The first group needs no build at all.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from evaluator.cascade import EvalConfig, Evaluator
from sandbox import extension
from sandbox.compiler import CompilerConfig
from tests.conftest import FAST_TIMING

DATA = Path(__file__).resolve().parent.parent / "data"
# a name of its own: tests/evaluator/test_compat.py builds the same kernel and times its own cache hit
SOURCE = (DATA / "softmax_load_inline.py").read_text().replace('"kw_test_softmax"', '"kw_sandbox_softmax"')
BROKEN = SOURCE.replace("return out;", "return out").replace('"kw_sandbox_softmax"', '"kw_sandbox_broken"')
assert SOURCE != BROKEN and "kw_sandbox_softmax" in SOURCE


# --- no build needed ---------------------------------------------------------------------------

def test_a_call_becomes_a_request_and_the_sources_load_inline_writes():
    spec = extension.from_call({"name": "ext", "cpp_sources": "int f(int x) { return x; }",
                                "functions": {"f": 'doc "quoted"\n\\'}, "extra_cflags": ["-O2"]})
    assert spec.cpp_sources == ("int f(int x) { return x; }",) and not spec.cuda and spec.arch is None
    again = extension.ExtensionSpec.from_meta(spec.to_meta())  # what crosses the channel
    assert again == spec and again.key() == spec.key()
    main = extension.sources(spec)["main.cpp"]
    assert main.startswith("#include <torch/extension.h>\nint f(int x)")
    assert "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {" in main
    assert 'm.def("f", torch::wrap_pybind_function(f), "doc \\042quoted\\042\\012\\134");' in main
    plain = extension.from_call({"name": "ext", "cpp_sources": ["a", "b"], "functions": ["f"],
                                 "with_pytorch_error_handling": False, "no_implicit_headers": True})
    assert extension.sources(plain)["main.cpp"].splitlines()[:4] == ["a", "b", "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {",
                                                                     'm.def("f", f, "f");']
    cuda = extension.from_call({"name": "ext", "cpp_sources": "", "cuda_sources": "__global__ void k() {}"}, arch="sm_90")
    assert cuda.cuda and cuda.arch == "sm_90"
    assert extension.sources(cuda)["cuda.cu"].endswith("#include <cuda_runtime.h>\n__global__ void k() {}")
    assert len({spec.key(), plain.key(), cuda.key()}) == 3


def test_the_recipe_names_what_torch_needs(tmp_path):
    import torch

    spec = extension.from_call({"name": "ext", "cpp_sources": "", "functions": ["f"], "extra_ldflags": ["-lm"]})
    (cxx,), link = extension.commands(spec, CompilerConfig(cache_dir=tmp_path))
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    for flag in ("-DTORCH_EXTENSION_NAME=ext", "-DTORCH_API_INCLUDE_EXTENSION_H", abi, "-fPIC", "-O3"):
        assert flag in cxx
    assert extension.STD in cxx and cxx.index("-O3") < cxx.index(extension.STD)  # the candidate's flags come last
    assert link[-1] == "-lm" and "ext.so" in link and {"-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"} <= set(link)


@pytest.mark.parametrize("meta,why", [
    ({"name": "bad-name"}, "bad extension name"),
    ({"name": "ext", "cpp_sources": "not a list"}, "list of strings"),
    ({"name": "ext", "functions": [["f; system(0)", "f"]]}, "bad function name"),
    ({"name": "ext", "arch": "sm_90 -o /x"}, "bad CUDA architecture"),
    ({"name": "ext", "extra_include_paths": ["a\nb"]}, "bad include path"),
])
def test_a_malformed_request_is_refused(meta, why):
    with pytest.raises(ValueError, match=why):
        extension.ExtensionSpec.from_meta(meta)


@pytest.fixture(scope="module")
def process_ev(sandbox):
    ev = Evaluator(sandbox, EvalConfig(timeout_s=600, timing=FAST_TIMING))  # a build is slow on a loaded machine
    yield ev
    ev.close()


def test_unsafe_flags_and_names_are_compile_errors_before_any_build(process_ev, small_task, sandbox):
    built = _record(sandbox)
    for old, new, words in ((r'extra_cflags=["-O3"]', r'extra_cflags=["-fplugin=/tmp/evil.so"]', "flag not allowed"),
                            ('"kw_sandbox_softmax"', '"kw-dash"', "bad extension name")):
        v = process_ev.evaluate(small_task, SOURCE.replace(old, new))
        assert v.status.value == "compile_error" and words in v.reason, (v.status, v.reason)
        assert v.stages["total"] < 15
    assert built == []  # refused before any build: the compiler never ran


# --- one real build, seen by both sandboxes ----------------------------------------------------

@pytest.fixture(scope="module")
def docker_ev(docker_sandbox):
    ev = Evaluator(docker_sandbox, EvalConfig(timeout_s=600, timing=FAST_TIMING))
    yield ev
    ev.close()


def _record(sb):
    """Every extension build the sandbox serves from now on, as (spec, result)."""
    built: list = []
    inner = type(sb).build_extension.__get__(sb)

    def spy(spec):
        result = inner(spec)
        built.append(result)
        return result

    sb.build_extension = spy
    return built


def test_the_image_holds_no_compiler(docker_sandbox, docker_image):
    out = docker_sandbox.client.containers.run(
        docker_image, ["sh", "-c", "for c in g++ c++ gcc cc nvcc ninja ld; do command -v $c; done; true"],
        remove=True, network_mode="none")
    assert out.decode().strip() == ""


@pytest.mark.slow
def test_docker_and_process_agree_on_a_load_inline_candidate(docker_ev, docker_sandbox, process_ev, sandbox, small_task):
    built = _record(docker_sandbox)
    d = docker_ev.evaluate(small_task, SOURCE)  # built by the supervisor, loaded in the container
    assert d.status.value == "ok", (d.reason, d.log[-2000:])
    assert [r.ok for r in built] == [True]
    lib = built[0].path
    assert lib.startswith(str(docker_sandbox.cfg.extensions.cache_dir)) and lib.endswith("/kw_sandbox_softmax.so")
    # the supervisor built it and never loaded it: its constructors are candidate code
    assert lib not in Path("/proc/self/maps").read_text()
    built_p = _record(sandbox)
    p = process_ev.evaluate(small_task, SOURCE)
    assert p.status.value == "ok", (p.reason, p.log[-2000:])
    assert [(r.ok, r.cached, r.path) for r in built_p] == [(True, True, lib)]  # the same library
    assert [(t.name, t.ok) for t in d.trials] == [(t.name, t.ok) for t in p.trials]
    for v in (d, p):
        assert v.speedup and v.speedup > 0 and v.candidate.median_ms > 0
        assert not any("build failed" in f for f in v.flags), v.flags
        # coverage: the extension counts as the candidate's own code (it is in worker.builds)
        if v.coverage is not None and v.coverage.samples > 50:
            assert v.coverage.share is not None and v.coverage.share > 0.5, (v.coverage, v.flags)
    print(f"\ncompile: docker {d.stages['compile']:.1f} s (built in {built[0].seconds:.1f} s), "
          f"process {p.stages['compile']:.1f} s (cache hit); speedups {d.speedup:.2f} / {p.speedup:.2f}; "
          f"coverage {d.coverage and d.coverage.share} / {p.coverage and p.coverage.share}")


@pytest.mark.slow
def test_a_second_evaluation_does_not_rebuild(docker_ev, docker_sandbox, small_task):
    docker_ev.evaluate(small_task, SOURCE)  # (builds here only when run alone)
    entries = sorted(docker_sandbox.cfg.extensions.cache_dir.glob("*/*"))
    built = _record(docker_sandbox)
    again = docker_ev.evaluate(small_task, SOURCE)
    assert again.status.value == "ok", again.reason
    assert [(r.ok, r.cached) for r in built] == [(True, True)] and built[0].seconds < 1
    assert sorted(docker_sandbox.cfg.extensions.cache_dir.glob("*/*")) == entries
    assert again.stages["compile"] < 15, again.stages


@pytest.mark.slow
def test_a_compile_error_quotes_the_compiler_in_both_sandboxes(docker_ev, docker_sandbox, process_ev, sandbox, small_task):
    built = _record(docker_sandbox)
    d = docker_ev.evaluate(small_task, BROKEN)
    assert d.status.value == "compile_error", (d.status, d.reason)
    assert re.search(r"main\.cpp:\d+:\d+: error: expected .;. before", d.reason), d.reason
    assert "error" in d.log and [r.ok for r in built] == [False]
    built_p = _record(sandbox)
    p = process_ev.evaluate(small_task, BROKEN)
    assert (p.status, p.reason) == (d.status, d.reason)
    assert [(r.ok, r.cached) for r in built_p] == [(False, True)]  # a refused source fails at once the next time
    print(f"\ncompile error: docker {d.stages['total']:.1f} s, process {p.stages['total']:.1f} s: {d.reason}")


def test_the_extension_cache_is_read_only_in_the_container(docker_sandbox):
    mounts = docker_sandbox._mounts(docker_sandbox.sock_root)
    ext = docker_sandbox.cfg.extensions.cache_dir
    assert mounts[str(ext.resolve())] == {"bind": os.path.abspath(ext), "mode": "ro"}
