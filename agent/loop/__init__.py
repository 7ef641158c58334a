"""The search loop: propose (LLM or tuner), judge (evaluate, reward, record), learn from the store."""
