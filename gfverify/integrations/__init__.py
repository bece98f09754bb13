"""Bridges from gfverify's measures to the pruning tools researchers already use.

- :mod:`gfverify.integrations.torch_pruning`: every measure as a Torch-Pruning importance
  (``tp.pruner.MetaPruner(..., importance=Importance("grasp", batches))``).
- :mod:`gfverify.integrations.torch_prune`: per-weight scores as ``importance_scores`` for
  ``torch.nn.utils.prune.global_unstructured``.
"""
