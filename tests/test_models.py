"""The three 18-layer networks: exact sizes from the course report, registry, side effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import ARCHITECTURES, architecture_complexity, build_model, count_complexity
from models.blocks import DepthwiseSeparableConv

EXPECTED = {
    "plain": (11_050_212, 0.55),
    "residual": (11_224_932, 0.56),
    "mobile": (1_326_052, 0.07),
}


@pytest.mark.parametrize("block", sorted(EXPECTED))
def test_parameter_and_mac_counts_match_the_report(block: str) -> None:
    params, gmacs = EXPECTED[block]
    complexity = architecture_complexity(block)
    assert complexity.params == params
    assert round(complexity.macs / 1e9, 2) == gmacs
    model = build_model(block)
    assert sum(p.numel() for p in model.parameters()) == params


def test_counting_leaves_the_model_as_it_was() -> None:
    model = build_model("residual", num_classes=10)
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    attributes_before = {id(m): set(vars(m)) for m in model.modules()}
    hooks_before = {
        id(m): len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    }

    complexity = count_complexity(model)

    assert complexity.params == sum(p.numel() for p in model.parameters())
    assert all(module.training for module in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    for module in model.modules():
        assert set(vars(module)) == attributes_before[id(module)]
        assert not hasattr(module, "__flops__")
        assert (
            len(module._forward_hooks) + len(module._forward_pre_hooks) == hooks_before[id(module)]
        )


def test_unknown_block_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="mobile, plain, residual"):
        build_model("dense")


def _weight_layers_on_main_path(model: nn.Module) -> int:
    layers = 0
    for module in model.modules():
        if isinstance(module, DepthwiseSeparableConv):
            layers += 1  # depthwise + pointwise are one layer
        elif isinstance(module, nn.Linear):
            layers += 1
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.groups == 1:
            layers += 1  # excludes 1x1 shortcut projections and separable parts
    return layers


@pytest.mark.parametrize("block", sorted(ARCHITECTURES))
def test_every_network_has_18_weight_layers_and_100_outputs(block: str) -> None:
    model = build_model(block)
    assert _weight_layers_on_main_path(model) == 18
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_residual_projects_only_where_the_shape_changes() -> None:
    model = build_model("residual")
    projections = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [
        (64, 128, (2, 2)),
        (128, 256, (2, 2)),
        (256, 512, (2, 2)),
    ]


def test_catalog_lists_every_registered_block_with_its_ptflops_counts() -> None:
    from models.catalog import BLOCK_NAMES, COMPLEXITY, BlockName

    assert tuple(ARCHITECTURES) == BLOCK_NAMES
    assert set(BLOCK_NAMES) == set(BlockName.__args__)
    for block in ARCHITECTURES:
        for num_classes in (100, 10):
            assert COMPLEXITY[(block, num_classes)] == architecture_complexity(block, num_classes)
