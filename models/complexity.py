"""Parameter and multiply-accumulate counts, measured on a copy so the model is left untouched."""

from __future__ import annotations

import copy
import threading
from functools import cache

from ptflops import get_model_complexity_info
from torch import nn

from models.catalog import Complexity

# ptflops patches torch functions for the whole process while it counts: two counts in parallel
# threads (an API's thread pool) break each other, so they take turns.
_COUNT_LOCK = threading.Lock()


def count_complexity(
    model: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32)
) -> Complexity:
    """Count parameters and MACs of ``model`` for one input of ``input_shape``.

    ptflops adds hooks and attributes and switches to eval mode, so it runs on a CPU deep copy.
    """
    model_copy = copy.deepcopy(model).cpu()
    with _COUNT_LOCK:
        macs, params = get_model_complexity_info(
            model_copy,
            tuple(input_shape),
            as_strings=False,
            backend="pytorch",
            print_per_layer_stat=False,
            verbose=False,
        )
    return Complexity(params=int(params), macs=int(macs))


@cache
def architecture_complexity(block: str, num_classes: int = 100) -> Complexity:
    """Complexity of ``build_model(block, num_classes)``, computed once per process."""
    from models.registry import build_model

    return count_complexity(build_model(block, num_classes))
