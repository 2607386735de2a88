import math

import pytest
import torch

from selftok.studies.generator import code_entropy, copying, nearest_distance, summary_lines


def test_code_entropy_is_zero_for_one_code_and_log_n_for_n_equally_used() -> None:
    codes = torch.stack([torch.zeros(8, dtype=torch.long), torch.arange(8) % 4], 1)  # position 1: one code; 2: four, evenly
    assert code_entropy(codes, num_codes=16) == pytest.approx([0.0, math.log(4)], abs=1e-6)


def test_nearest_distance_is_the_share_of_positions_that_differ() -> None:
    pool = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    queries = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 0], [9, 9, 9, 9]])
    assert nearest_distance(queries, pool, chunk=2).tolist() == [0.0, 0.5, 1.0]
    row = copying(queries[:1], queries[1:], pool)
    assert row["generated_exact_copies"] == 1.0 and row["real_exact_copies"] == 0.0 and row["real_nearest"] == 0.75


def test_summary_lines_band_the_positions_and_list_the_curve() -> None:
    k = 64
    curve = [{"k": k_, "shape_agreement": 0.5, "color_agreement": 0.9, "position_agreement": 0.8, "shape_given_place": 0.625}
             for k_ in (0, 32, 64)]
    report = {"arm": "selftok", "scenes": 4, "seeds": 2, "code_entropy": [1.0] * 32 + [3.0] * 32,
              "loss_by_position": {"train": [2.0] * k, "val": [2.5] * k}, "completion": curve,
              "copying": {"generated_nearest": 0.5, "real_nearest": 0.6},
              "decoders": {"prompts": "rl_test", "renderer": [0.1, 0.2], "renderer_overall": {"mean": 0.15}, "diffusion_overall": {"mean": 0.25},
                           "diffusion_gain": {"mean": 0.1, "se": 0.02}}}
    lines = summary_lines(report)
    assert "rl_test overall: renderer 0.150, diffusion 0.250 (gain +0.100 +- 0.020 over 2 sampling seeds)" in lines
    assert any(line.startswith(" 33-64") and "3.000" in line and "2.500" in line for line in lines)
    assert sum("0.625" in line for line in lines) == 3


def test_loss_by_position_does_not_depend_on_batching_or_padding() -> None:
    from selftok.data.codes import CodeSet
    from selftok.studies.generator import head, loss_by_position
    from selftok.vlm.model import SelftokVLM, build_lm
    from selftok.vlm.params import VLMParams
    from selftok.vlm.vocab import VLMTokenizer

    captions = ["a photo of a red circle", "two blue squares", "a green star left of a yellow diamond"]
    tokenizer = VLMTokenizer.build(captions * 4, num_codes=16, num_tokens=6, text_vocab_size=300)
    vlm = SelftokVLM(build_lm(VLMParams(size="tiny"), tokenizer, seed=0).eval(), tokenizer)
    codes = CodeSet(torch.randint(0, 16, (3, 6), generator=torch.Generator().manual_seed(0)), captions, [{}] * 3, ["a", "b", "c"])
    together = loss_by_position(vlm, codes, batch_size=3)  # captions of three lengths: right padding
    alone = [loss_by_position(vlm, CodeSet(codes.codes[i : i + 1], [c], [{}], [str(i)])) for i, c in enumerate(captions)]
    assert len(together) == 6 and all(0 < v < 10 for v in together)
    assert together == pytest.approx([sum(a[p] for a in alone) / 3 for p in range(6)], rel=1e-4)
    assert loss_by_position(vlm, head(codes, 1)) == pytest.approx(alone[0], rel=1e-5)
