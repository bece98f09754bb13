"""Model registry: the paper's CIFAR networks and small nets for claims and tests.

``MODELS`` maps a name to a factory ``(num_classes=10, width_mult=1.0, input_size=32, **kw) ->
nn.Module``. Adding a model is one registration::

    @register_model("my_net")
    def my_net(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32) -> nn.Module:
        ...

A user's own factory outside this package is loaded by :func:`load_factory` from a
``"pkg.module:callable"`` string.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from torch import nn

from gfverify.errors import ModelError
from gfverify.models.cifar_mobilenet import CifarMobileNetV1, mobilenet_v1
from gfverify.models.cifar_resnet import BasicBlock, CifarResNet, resnet56
from gfverify.models.cifar_vgg import CifarVGG, vgg13
from gfverify.models.small import MLP, DepthwiseSeparable, ResidualBlock, SmallCNN, SmallNetSpec

ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: ``MODELS[name] = factory``; a name may be registered only once."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if not callable(factory):
            raise ModelError(f"cannot register model {name!r}: {factory!r} is not callable")
        if name in MODELS:
            raise ModelError(f"model name {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return decorate


register_model("vgg13")(vgg13)
register_model("mobilenet_v1")(mobilenet_v1)
register_model("resnet56")(resnet56)


def build_model(
    name: str, num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32, **kw: object
) -> nn.Module:
    """``MODELS[name](num_classes=..., width_mult=..., input_size=..., **kw)``.

    Raises :class:`ModelError` for an unknown name (listing the valid ones), for arguments the
    factory does not accept, and for out-of-range values.
    """
    try:
        factory = MODELS[name]
    except (KeyError, TypeError):
        raise ModelError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    kwargs = dict(num_classes=num_classes, width_mult=width_mult, input_size=input_size, **kw)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ModelError(f"model {name!r} does not accept these arguments: {e}") from None
    except ValueError:  # no signature available (some builtins): let the call decide
        pass
    return factory(**kwargs)


def load_factory(spec: str) -> ModelFactory:
    """Import ``attr`` from ``module`` given ``"module:attr"`` (``attr`` may be dotted).

    The current directory is importable, as under ``python -m``: it is put first on
    ``sys.path`` unless already there (in any spelling, ``""`` included), so
    ``--model nets:make`` finds ``./nets.py``. Raises :class:`ModelError` with a one-line
    message when the string is malformed, the module cannot be imported, the attribute is
    missing, or it is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ModelError(f"model factory must look like 'pkg.module:callable', got {spec!r}")
    module_name, attr_path = (part.strip() for part in spec.split(":"))
    if not module_name or not attr_path:
        raise ModelError(f"model factory must look like 'pkg.module:callable', got {spec!r}")
    import os
    import sys

    try:
        cwd = os.getcwd()
    except OSError:  # the current directory was removed: nothing to add
        cwd = None
    if cwd is not None and not any(os.path.abspath(p or ".") == cwd for p in sys.path):
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as e:  # any import-time failure is the user's module's fault
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ModelError(f"cannot import module {module_name!r} for {spec!r} ({reason})") from None
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ModelError(f"{spec!r}: attribute {attr!r} not found") from None
    if not callable(obj):
        raise ModelError(f"{spec!r} is not callable (it is a {type(obj).__name__})")
    return obj


def require_module(obj: object, spec: str) -> nn.Module:
    """``obj`` if it is an ``nn.Module``, else a one-line ModelError naming the factory ``spec``
    and what it returned (a factory must return the model, not e.g. its class or a tuple)."""
    if isinstance(obj, nn.Module):
        return obj
    what = f"the class {obj.__name__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
    raise ModelError(f"model factory {spec!r} returned {what}, not a torch.nn.Module")


__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "CifarMobileNetV1",
    "CifarResNet",
    "CifarVGG",
    "DepthwiseSeparable",
    "ModelFactory",
    "ResidualBlock",
    "SmallCNN",
    "SmallNetSpec",
    "build_model",
    "load_factory",
    "require_module",
    "mobilenet_v1",
    "register_model",
    "resnet56",
    "vgg13",
]
