from sandbox.env import worker_env


def test_only_allowed_and_no_secret_variables():
    parent = {"PATH": "/usr/bin", "OPENAI_API_KEY": "sk-1", "GITHUB_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s",
              "PGPASSWORD": "p", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "RANDOM_THING": "x"}
    env = worker_env(parent, "/w", 2, {"MY_API_KEY": "leak", "KERNELWRIGHT_SANDBOX": "1"})
    assert env["PATH"] == "/usr/bin" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["HOME"] == "/w" and env["OMP_NUM_THREADS"] == "2" and env["KERNELWRIGHT_SANDBOX"] == "1"
    assert not {"OPENAI_API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "RANDOM_THING", "MY_API_KEY"} & set(env)
