"""Where the pipeline's data, models and checkpoints live, relative to the project root.

The one source of these paths: dvc.yaml loads this file as its ``vars`` (DVC reads the literal
assignments of a Python file), and the code imports it, so the stage graph and the stages
cannot disagree. Only literals belong here: DVC silently skips anything it cannot evaluate.

``ARMS`` holds the tokenizer arms (selftok.stages.arms): Selftok and the spatial-token control
go through the same stage code with their own paths. An arm whose ``renderer`` is its
``tokenizer`` renders with the tokenizer's own decoder; ``suffix`` names the arm's metrics files
(Selftok keeps the plain names).
"""

SHARDS = "data/shards"
ACCEPTED = "data/accepted"
VALIDATION = "data/validation"
EVALUATOR = "models/evaluator"
EVALUATOR_CHECKPOINTS = "checkpoints/evaluator"
JUDGE = "models/judge"
JUDGE_CHECKPOINTS = "checkpoints/judge"
VAE = "models/vae"
VAE_CHECKPOINTS = "checkpoints/vae"
TOKENIZER_CHECKPOINTS = "checkpoints/tokenizer"
RENDERER_CHECKPOINTS = "checkpoints/renderer"
SPATIAL_CHECKPOINTS = "checkpoints/spatial"
REPORTS = "reports"

ARMS = {
    "selftok": {
        "tokenizer": "models/tokenizer",
        "renderer": "models/renderer",
        "codes": "data/codes",
        "vlm": "models/vlm",
        "vlm_rl": "models/vlm_rl",
        "vlm_checkpoints": "checkpoints/vlm",
        "rl_checkpoints": "checkpoints/rl",
        "suffix": "",
    },
    "spatial": {
        "tokenizer": "models/spatial",
        "renderer": "models/spatial",
        "codes": "data/codes_spatial",
        "vlm": "models/vlm_spatial",
        "vlm_rl": "models/vlm_rl_spatial",
        "vlm_checkpoints": "checkpoints/vlm_spatial",
        "rl_checkpoints": "checkpoints/rl_spatial",
        "suffix": "_spatial",
    },
}
