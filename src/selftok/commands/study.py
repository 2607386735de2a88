"""`selftok study ...`: the studies of selftok.studies, measurements beside the pipeline.

Results and tables go to stdout (and the files each study names), logs to stderr. Heavy imports
happen inside the commands, so `selftok --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from selftok.commands.common import console, fail, read_params, setup_logging
from selftok.errors import SelftokError
from selftok.paths import ARMS

study_app = typer.Typer(help="Studies beside the pipeline: an RL recipe over seeds, sampling recipes, a tokenizer's scores, "
                        "a generator's diagnosis.",
                        no_args_is_help=True)

Root = Annotated[Path, typer.Option("--root", help="Project the pipeline has built (params.yaml, models/).")]
Threads = Annotated[int, typer.Option("--threads", help="torch threads (0: torch's default).")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="params override KEY=VALUE, e.g. rl.group_size=24 (repeatable).")]


def _prepare(threads: int) -> None:
    """Plain log lines, the noisy libraries quiet, and the torch thread count."""
    import torch

    setup_logging()
    if threads:
        torch.set_num_threads(threads)


def _seed_values(first: list[int], extra: list[str]) -> list[int]:
    """``--seeds 0 1 2``: click gives an option one value, so the values after the first arrive as extra arguments."""
    try:
        return [*first, *(int(value) for value in extra)]
    except ValueError:
        fail(f"unexpected arguments {' '.join(extra)}; --seeds takes integers")


@study_app.command("rl-seeds", context_settings={"allow_extra_args": True})
def rl_seeds(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="The recipe's name: results go to OUT/NAME.")],
    seeds: Annotated[list[int], typer.Option("--seeds", help="Values of rl.seed, e.g. --seeds 0 1 2.")],
    root: Root = Path("."),
    sets: Sets = None,
    out: Annotated[Path, typer.Option("--out", help="Where studies of this project go.")] = Path("ablation_runs/rl"),
    threads: Threads = 0,
    arm: Annotated[str, typer.Option("--arm", help="Tokenizer arm whose RL stage runs (give it its own --out).")] = "selftok",
    sample_seeds: Annotated[int, typer.Option("--sample-seeds", help=(
        "Score rl_test and compositional under this many sampling seeds, paired with the pretrained model's (the protocol: 4)."))] = 1,
) -> None:
    """One RL recipe over several rl.seed values, scored on the evaluate stage's benchmark.

    Each seed runs the real RL stage in OUT/NAME/seed_S and is scored on rl_test (the headline) and
    compositional, by the evaluator and the second judge (models/judge), and on RL's own prompts;
    OUT/NAME/summary.json (with the protocol's bars) and table.md hold the gains. One draw of images
    moves a score about 2 points, hence --sample-seeds.
    """
    from selftok.studies.rl_seeds import SeedsStudy, run

    _prepare(threads)
    study = SeedsStudy(root.resolve(), name, _seed_values(seeds, ctx.args), sets or [], out, arm, sample_seeds)
    try:
        summary = run(study, typer.echo)
    except (SelftokError, FileNotFoundError) as error:
        fail(str(error))
    typer.echo(json.dumps(summary))


@study_app.command("sampling")
def sampling(
    recipes: Annotated[list[str], typer.Option("--recipe", help="KEY=VALUE[,KEY=VALUE] of vlm.sampling, e.g. cfg_scale=7 (repeatable).")],
    out: Annotated[Path, typer.Option("--out", help="JSON file of the scores.")],
    root: Root = Path("."),
    model: Annotated[Path, typer.Option("--model", help="The VLM folder, relative to the root.")] = Path(ARMS["selftok"]["vlm"]),
    seeds: Annotated[int, typer.Option("--seeds", help="Sampling seeds per recipe.")] = 2,
    threads: Threads = 0,
    against: Annotated[Path | None, typer.Option("--against", help="An earlier sweep's JSON (another model): paired gains over it.")] = None,
) -> None:
    """A VLM's benchmark scores under other sampling recipes.

    Scored on RL's own prompts (choose there) and held out (check there); with --against, the gains
    over another model's sweep, paired on the same draws, go to OUT.paired.json.
    """
    from selftok.studies.sampling import Sweep, run

    _prepare(threads)
    try:
        run(Sweep(root.resolve(), recipes, out, model, seeds, against), typer.echo)
    except (SelftokError, FileNotFoundError) as error:
        fail(str(error))


@study_app.command("tokenizer")
def tokenizer(
    root: Root = Path("."),
    cache: Annotated[Path, typer.Option("--cache", help="Where the val scenes are cached.")] = Path("ablation_runs/tokenizer"),
    threads: Threads = 0,
    val_images: Annotated[int, typer.Option("--val-images", help="Val scenes to score (512: the comparison bar).")] = 128,
    ceiling: Annotated[bool, typer.Option("--ceiling", help="Add the generation benchmark's data ceiling on these tokens.")] = False,
) -> None:
    """The project's tokenizer and renderer scored on fixed val scenes, as JSON.

    PSNR / SSIM, codes in use, and the scene evaluator's shape / colour / place agreement (per
    shape, on seen and held-out colour-shape pairs); compare recipes over two seeds at 512 scenes.
    """
    from selftok.studies.tokenizer import score

    params = read_params(root) if ceiling else None  # a malformed params file fails before minutes of scoring
    _prepare(threads)
    try:
        row = score(root, val_images, cache, params)
    except (SelftokError, FileNotFoundError) as error:
        fail(str(error))
    console.print(f"scored {val_images} val scenes of {root / 'models'}", highlight=False)
    typer.echo(json.dumps(row, indent=1))


@study_app.command("generator")
def generator(
    out: Annotated[Path, typer.Option("--out", help="JSON file of the diagnosis.")],
    root: Root = Path("."),
    arm: Annotated[str, typer.Option("--arm", help="Tokenizer arm whose VLM is diagnosed.")] = "selftok",
    scenes: Annotated[int, typer.Option("--scenes", help="Val scenes (and as many train scenes) measured.")] = 256,
    seeds: Annotated[int, typer.Option("--seeds", help="Sampling seeds of the completions and of the benchmark.")] = 2,
    threads: Threads = 0,
) -> None:
    """Where a pretrained VLM loses what its tokens can carry.

    Its loss by token position beside the codes' entropy there, completions of real code prefixes
    scored against the real renders (shape agreement against k), how close its samples sit to the
    training codes, and (Selftok) the benchmark through the renderer and the diffusion decoder.
    """
    from selftok.studies.generator import Diagnosis, run, summary_lines

    if arm not in ARMS:
        fail(f"--arm {arm!r}: known arms are {', '.join(ARMS)}")
    params = read_params(root)
    _prepare(threads)
    try:
        report = run(Diagnosis(root.resolve(), out, arm, scenes, seeds), params, typer.echo)
    except (SelftokError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    for line in summary_lines(report):
        console.print(line, highlight=False)
