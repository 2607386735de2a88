"""Scene evaluator, GenEval-style benchmark and evaluator-based metrics.

The scene evaluator is a small detector trained on validated real renders; everything that
judges images (GenEval-style scores, RL rewards, Frechet distance on evaluator features,
reconstruction fidelity) goes through it, so its own accuracy is measured and reported.
"""
