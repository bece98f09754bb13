"""gfverify: the gradient-flow framework for network pruning (Lubana & Dick, ICLR 2021), checkable.

Modules, one idea each: ``flow`` (θ, g, Hg and their time derivatives under gradient flow),
``groups`` (prunable filter groups), ``measures`` (importance scores), ``ranking``/``schedule``
/``surgery`` (pruning), ``train`` (prune-while-training), ``claims`` (executable claims).
"""

__version__ = "0.1.0"
