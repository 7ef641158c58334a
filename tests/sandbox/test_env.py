from pathlib import Path

import pytest

from sandbox.env import worker_env


def test_only_allowed_and_no_secret_variables():
    parent = {"PATH": "/usr/bin", "OPENAI_API_KEY": "sk-1", "GITHUB_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s",
              "PGPASSWORD": "p", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "RANDOM_THING": "x"}
    env = worker_env(parent, "/w", 2, {"MY_API_KEY": "leak", "KERNELWRIGHT_SANDBOX": "1"})
    assert env["PATH"] == "/usr/bin" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["HOME"] == "/w" and env["OMP_NUM_THREADS"] == "2" and env["KERNELWRIGHT_SANDBOX"] == "1"
    assert not {"OPENAI_API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "RANDOM_THING", "MY_API_KEY"} & set(env)


def test_freed_large_blocks_stay_in_the_heap(tmp_path):
    """A worker's second 64 MiB output must not page-fault anew (it did, 16k faults a call)."""
    import os
    import subprocess
    import sys
    code = ("import resource, torch\n"
            "def faults():\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "torch.empty(1 << 24).fill_(1.0)\n"
            "before = faults()\n"
            "for _ in range(3):\n"
            "    torch.empty(1 << 24).fill_(1.0)\n"
            "print(faults() - before)\n")
    (tmp_path / "tmp").mkdir()
    env = worker_env(os.environ, str(tmp_path), 1)

    def run(environment):
        return int(subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                                  text=True, check=True).stdout)
    if Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().find("[never]") >= 0:
        pytest.skip("transparent huge pages are off on this host")
    assert run(env) < 3 * 16384 / 4
    bare = {k: v for k, v in env.items() if k != "GLIBC_TUNABLES"}
    assert run(bare) > 3 * 16384 * 0.9  # the test can see the difference it guards
