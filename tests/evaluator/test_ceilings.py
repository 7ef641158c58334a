"""Ceilings (a real, tiny measurement) and the roofline arithmetic on figures made up here."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from evaluator import ceilings
from evaluator.ceilings import CeilingError, Ceilings, Sizes
from evaluator.roofline import (
    MARGIN,
    bandwidth,
    beyond_roofline,
    peak_fraction,
    roofline,
)
from tasks.work import Work


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Ceilings:
    core = max(os.sched_getaffinity(0))
    return ceilings.measure((core,), 1, fingerprint_id="fp-test", sizes=Sizes.tiny(),
                            cache_dir=tmp_path_factory.mktemp("ceilings-cache"))


def test_a_tiny_measurement_gives_sane_figures(measured: Ceilings):
    c = measured
    assert c.device == "cpu" and c.fingerprint_id == "fp-test" and c.threads == 1 and len(c.cores) == 1
    for name in ("copy_gbs", "read_gbs", "copy_gbs_cached", "read_gbs_cached", "fma_gflops"):
        assert 0.1 < getattr(c, name) < 1e5, name
    # a working set well inside L2 moves at least about as fast as one 128 times larger
    assert c.copy_gbs_cached >= 0.8 * c.copy_gbs
    assert c.llc_bytes > 0 and c.details["uncached_bytes"] == Sizes.tiny().uncached_bytes
    assert {"L2/copy/loop", "L2/copy/memcpy", "L2/copy/stream", "DRAM/read", "fma"} <= set(c.details["runs"])
    assert c.copy_gbs == pytest.approx(max(v for k, v in c.details["runs"].items() if k.startswith("DRAM/copy")), abs=0.01)


def test_json_round_trip(measured: Ceilings):
    again = Ceilings.from_json(json.loads(json.dumps(measured.to_json())))
    assert again == measured and isinstance(again.cores, tuple)


def test_bad_thread_count_and_cache_sizes():
    with pytest.raises(CeilingError):
        ceilings.measure((0,), 0, sizes=Sizes.tiny())
    assert ceilings._size("48K") == 48 << 10 and ceilings._size("2048K") == 2 << 20 and ceilings._size("1M") == 1 << 20
    sizes = ceilings.cache_sizes()
    assert all(v > 0 for v in sizes.values())


def made_up(**kw) -> Ceilings:
    base = {"device": "cpu", "fingerprint_id": "x", "cores": (1,), "threads": 1, "copy_gbs": 10.0, "read_gbs": 8.0,
            "copy_gbs_cached": 100.0, "read_gbs_cached": 50.0, "fma_gflops": 100.0,
            "measured_at": "2026-01-01T00:00:00+00:00", "llc_bytes": 1 << 20, "details": {}}
    return Ceilings(**{**base, **kw})


def test_peak_fraction_memory_and_compute_bound():
    c = made_up()
    # 1 GB out of cache at 10 GB/s: 100 ms is exactly the ceiling
    assert peak_fraction(Work(0.0, 1e9, "derived"), c, 100.0) == pytest.approx((1.0, "memory"))
    assert peak_fraction(Work(0.0, 1e9, "derived"), c, 400.0) == pytest.approx((0.25, "memory"))
    # 1e10 FLOPs at 100 GFLOP/s: 100 ms; the bytes are few
    assert peak_fraction(Work(1e10, 1e3, "declared"), c, 100.0) == pytest.approx((1.0, "compute"))
    # a working set inside the LLC gets the in-cache bandwidth (100 GB/s), unless told otherwise
    assert peak_fraction(Work(0.0, 1e5, "derived"), c, 1e-3)[0] == pytest.approx(1.0)
    assert peak_fraction(Work(0.0, 1e5, "derived"), c, 1e-3, cached=False)[0] == pytest.approx(10.0)
    with pytest.raises(ValueError):
        peak_fraction(Work(0.0, 1e5, "derived"), c, 0.0)


def test_bandwidth_picks_the_smallest_level_that_fits_and_never_less_than_a_larger_one():
    levels = [{"level": "L1", "capacity_bytes": 1000, "bytes": 500, "copy_gbs": 400.0, "read_gbs": 300.0},
              {"level": "L2", "capacity_bytes": 10_000, "bytes": 2500, "copy_gbs": 100.0, "read_gbs": 150.0},
              {"level": "LLC", "capacity_bytes": 1 << 20, "bytes": 1 << 18, "copy_gbs": 5.0, "read_gbs": 4.0}]
    c = made_up(details={"levels": levels})
    assert bandwidth(c, 800) == (400.0, "L1")
    assert bandwidth(c, 5000) == (150.0, "L2")  # the better of copy and read
    assert bandwidth(c, 100_000) == (10.0, "LLC")  # measured below memory's 10: memory's stands
    assert bandwidth(c, 1 << 30) == (10.0, "memory")


def test_beyond_roofline_rejects_only_past_the_margin():
    c = made_up()
    w = Work(0.0, 1e9, "declared")
    assert beyond_roofline(w, c, 100.0) is None  # at the ceiling
    assert beyond_roofline(w, c, 100.0 / (1 + MARGIN) * 1.01) is None  # inside the margin
    reason = beyond_roofline(w, c, 10.0)  # 10x the ceiling
    assert reason is not None and reason.startswith("beyond_roofline:")
    assert "10.00x" in reason and "memory" in reason and "1e+09 bytes" in reason and "100 ms" in reason
    assert beyond_roofline(Work(1e12, 0.0, "derived"), c, 1.0, margin=0.1).startswith("beyond_roofline:")
    r = roofline(Work(1e12, 0.0, "derived"), c, 1.0)
    assert r["bound"] == "compute" and r["peak_fraction"] == pytest.approx(1e4)


def test_device_json_hook(tmp_path):
    f = tmp_path / "gpu.json"
    f.write_text(json.dumps({"device": "cuda", "fingerprint_id": "gpu1", "copy_gbs": 3000.0, "l2_bytes": 50 << 20,
                             "fma_gflops": 60000.0, "tflops": {"bf16": 700.0}}))
    c = ceilings.from_device_json(f)
    assert (c.device, c.fingerprint_id, c.copy_gbs, c.read_gbs_cached, c.llc_bytes) == ("cuda", "gpu1", 3000.0, 3000.0, 50 << 20)
    assert c.details["tflops"] == {"bf16": 700.0}
    assert dataclasses.replace(c) == Ceilings.from_json(c.to_json())
    with pytest.raises(CeilingError):
        ceilings.from_device_json({"device": "cuda"})


def test_best_of_keeps_the_better_figure_of_each_and_refuses_other_cores(measured: Ceilings):
    import dataclasses as dc
    half = [{**lv, "copy_gbs": lv["copy_gbs"] / 2} for lv in measured.details["levels"]]
    worse = dc.replace(measured, copy_gbs=measured.copy_gbs / 2, fma_gflops=measured.fma_gflops * 2,
                       details={**measured.details, "levels": half})
    both = ceilings.best_of(worse, measured)
    assert both.copy_gbs == measured.copy_gbs and both.fma_gflops == measured.fma_gflops * 2
    assert [lv["copy_gbs"] for lv in both.details["levels"]] == [lv["copy_gbs"] for lv in measured.details["levels"]]
    with pytest.raises(CeilingError, match="not of the same cores"):
        ceilings.best_of(measured, dc.replace(measured, cores=(measured.cores[0] + 1,)))


def test_the_gpu_ceiling_kernels_compile_and_no_gpu_is_a_one_line_error(tmp_path):
    import shutil
    import subprocess
    import sys

    from evaluator import gpu_ceilings
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc here")
    path = gpu_ceilings.build(tmp_path)  # real nvcc, sm_90: what the device script runs
    assert os.path.getsize(path) > 0
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: scripts/gpu_check.sh measures it")
    proc = subprocess.run([sys.executable, "-m", "evaluator.gpu_ceilings", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: no CUDA device visible" and not proc.stdout


def test_gpu_ceilings_read_back_and_the_compute_ceiling_is_the_fastest_dtype():
    gpu = ceilings.from_device_json({"device": "cuda", "fingerprint_id": "g1", "copy_gbs": 4000.0, "read_gbs": 4200.0,
                                     "l2_bytes": 50 << 20, "fma_gflops": 60000.0,
                                     "tflops": {"bf16": 780.0, "tf32": 380.0}, "quick": False})
    again = ceilings.from_device_json(gpu.to_json())  # what `python -m evaluator.gpu_ceilings --out` writes
    assert again.details["tflops"] == {"bf16": 780.0, "tf32": 380.0} and again.copy_gbs == 4000.0
    w = Work(flops=2 * 8192.0 ** 3, bytes=3 * 2 * 8192.0 ** 2, source="derived")
    r = roofline(w, again, 1.5)  # a bf16 GEMM at 733 TFLOP/s: within the tensor-core ceiling
    assert r["gflops"] == 780e3 and r["bound"] == "compute" and 0.9 < r["peak_fraction"] < 1.0
    assert beyond_roofline(w, again, 1.5) is None
    fp32_only = dataclasses.replace(again, details={**again.details, "tflops": {}})
    assert beyond_roofline(w, fp32_only, 1.5).startswith("beyond_roofline:")  # against fp32 FMA it would be
