import torch

from selftok.tokenizer.loss import edge_map, pixel_loss


def square_image() -> torch.Tensor:
    """One image [1, 3, 16, 16]: a white square on black, edges at rows/cols 4 and 11."""
    image = -torch.ones(1, 3, 16, 16)
    image[..., 4:12, 4:12] = 1.0
    return image


def test_edge_map_marks_only_the_neighbourhood_of_edges() -> None:
    edges = edge_map(square_image())
    assert edges.shape == (1, 1, 16, 16)
    assert edges.max() == 1.0 and edges.min() == 0.0
    assert edges[0, 0, 0, 0] == 0.0 and edges[0, 0, 8, 8] == 0.0  # flat background, flat inside
    assert edges[0, 0, 4, 4] == 1.0 and edges[0, 0, 3, 8] == 1.0  # corner, and just outside an edge
    assert edge_map(torch.zeros(2, 3, 8, 8)).abs().sum() == 0


def test_pixel_loss_is_mse_without_weight_and_keeps_its_scale_with_it() -> None:
    target = square_image()
    error = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pixel_loss(error, target, 0.0), error.pow(2).mean().view(1))
    uniform = torch.full_like(target, 0.5)
    assert torch.allclose(pixel_loss(uniform, target, 4.0), torch.tensor([0.25]))  # weights average to 1


def test_edge_errors_cost_more_than_flat_errors() -> None:
    target = square_image()
    at_corner, in_flat = torch.zeros_like(target), torch.zeros_like(target)
    at_corner[..., 4, 4] = 1.0
    in_flat[..., 8, 8] = 1.0
    assert torch.equal(pixel_loss(at_corner, target, 0.0), pixel_loss(in_flat, target, 0.0))
    assert pixel_loss(at_corner, target, 4.0) > 3 * pixel_loss(in_flat, target, 4.0)
