import math

import pytest
import torch

from selftok.studies.generator import code_entropy, copying, mean_se, nearest_distance, summary_lines


def test_code_entropy_is_zero_for_one_code_and_log_n_for_n_equally_used() -> None:
    codes = torch.stack([torch.zeros(8, dtype=torch.long), torch.arange(8) % 4], 1)  # position 1: one code; 2: four, evenly
    assert code_entropy(codes, num_codes=16) == pytest.approx([0.0, math.log(4)], abs=1e-6)


def test_nearest_distance_is_the_share_of_positions_that_differ() -> None:
    pool = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    queries = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 0], [9, 9, 9, 9]])
    assert nearest_distance(queries, pool, chunk=2).tolist() == [0.0, 0.5, 1.0]
    row = copying(queries[:1], queries[1:], pool)
    assert row["generated_exact_copies"] == 1.0 and row["real_exact_copies"] == 0.0 and row["real_nearest"] == 0.75


def test_mean_se_over_seeds() -> None:
    assert mean_se([0.5]) == (0.5, 0.0)
    mean, se = mean_se([0.1, 0.3])
    assert mean == pytest.approx(0.2) and se == pytest.approx(0.1)


def test_summary_lines_band_the_positions_and_list_the_curve() -> None:
    k = 64
    curve = [{"k": k_, "shape_agreement": 0.5, "color_agreement": 0.9, "position_agreement": 0.8, "shape_given_place": 0.625}
             for k_ in (0, 32, 64)]
    report = {"arm": "selftok", "scenes": 4, "seeds": 2, "code_entropy": [1.0] * 32 + [3.0] * 32,
              "loss_by_position": {"train": [2.0] * k, "val": [2.5] * k}, "completion": curve,
              "copying": {"generated_nearest": 0.5, "real_nearest": 0.6}}
    lines = summary_lines(report)
    assert any(line.startswith(" 33-64") and "3.000" in line and "2.500" in line for line in lines)
    assert sum("0.625" in line for line in lines) == 3
