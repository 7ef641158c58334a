"""The evaluator's instrument inside a worker: the probe and what it measures with. Everything
it reports is a claim the supervisor checks (evaluator/candidate.py, evaluator/rounds.py)."""
