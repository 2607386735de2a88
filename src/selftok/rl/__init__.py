"""RL on visual tokens (Selftok-Zero): GRPO over the AR model's image generations."""
