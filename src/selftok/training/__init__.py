"""What every model's training shares: the accelerate loop, lr schedules, checkpoints and the
loss history. It knows no model: tokenizer, VLM, RL and evaluator build on it."""
