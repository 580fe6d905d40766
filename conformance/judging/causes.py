"""Why an extraction raised: the cause of an ``error`` row, measured like a diagnosis.

A strategy that raises gets ``build_failed`` (attaching raised) or ``call_failed`` (calling
raised). :func:`explain` names the cause where one is measured, and leaves the row as it is
otherwise; the headline counts what is left as unexplained errors. Each cause has its
planted fault in ``tests/test_causes.py``.

=====================  ===========================================================  ==========================
cause                  measured by                                                  planted fault
=====================  ===========================================================  ==========================
not_called             the oracle's pass never runs the layer's module (a           ``never_called``
                       ``ModuleList``, an aux head in eval), the strategy fails on
                       it requested alone and works on the other layers
children_not_chained   running the top-level children one after another in          ``functional_between``
                       registration order raises the very same exception
non_tensor_output      the layer's module returns more than tensors and lists or    ``sized_patches``
                       tuples of them (a ``torch.Size``, a dict, an object), the
                       strategy fails on it requested alone, and the error names
                       the type of a part of that output or the strategy works on
                       the other layers alone
untraceable            the exception was raised inside ``torch.fx``'s symbolic      ``data_dependent_control_
                       trace (``TraceError``, ``len`` or ``int()`` of a ``Proxy``);  flow``, ``len_of_input``
                       the detail names the model's source line
traced_optional_input  the traced graph made an argument that defaults to ``None``  ``optional_mask``
                       an input and uses it: the node that raised takes it, and it
                       is ``None`` in the call (a ``mask is not None`` branch)
request_order          the request fails as a whole and the same layers in the      ``reordered_children``
                       order the modules run work
=====================  ===========================================================  ==========================
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from strategies.base import tensor_tree

__all__ = ["GENERIC_ERRORS", "describe_exception", "explain", "explain_whole", "keep_lines_only", "request_order", "traced_optional_input"]

#: Error diagnoses that say what raised, not why: counted as unexplained errors.
GENERIC_ERRORS = ("", "build_failed", "call_failed", "check_failed", "oracle_failed", "layers_failed")

Cause = Optional[tuple[str, str]]


def describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def keep_lines_only(exc: BaseException) -> None:
    """Replace the traceback of ``exc`` (and of the exceptions it chains) by its lines: the
    frames of a traceback hold their functions and locals (a model's copy, a traced graph)
    for as long as the exception is kept, and the causes read only the lines."""
    while exc is not None and exc.__traceback__ is not None:
        exc._lines = traceback.extract_tb(exc.__traceback__)  # type: ignore[attr-defined]
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def _lines(exc: BaseException) -> traceback.StackSummary:
    return getattr(exc, "_lines", None) or traceback.extract_tb(exc.__traceback__)


def _model_line(exc: BaseException) -> str:
    """Where in the model's code the trace failed: the innermost frame outside torch."""
    torch_dir = str(Path(torch.__file__).parent) + os.sep  # not torchvision
    frames = [frame for frame in _lines(exc) if not frame.filename.startswith(torch_dir)]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {Path(frame.filename).name}:{frame.lineno}" + (f" ({frame.line})" if frame.line else "")


def _raised_while_tracing(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside ``torch.fx``'s symbolic trace (``Tracer.trace``)."""
    if isinstance(exc, torch.fx.proxy.TraceError):
        return True
    return any(Path(frame.filename).parts[-3:] == ("torch", "fx", "_symbolic_trace.py") and frame.name == "trace"
               for frame in _lines(exc))


def non_tensors(value: Any) -> list[str]:
    """The type names of what ``value`` holds besides tensors and lists or tuples of them."""
    if isinstance(value, torch.Tensor):
        return []
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return [name for item in value for name in non_tensors(item)]
    return [f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")]


def explain(*, exc: BaseException, layers: Sequence[str], not_run: Callable[[str], bool], replay_error: Callable[[], str | None],
            works_elsewhere: bool, outputs: Callable[[str], Any] = lambda layer: None) -> Cause:
    """The cause of one failed request of ``layers``, or None where none is measured;
    ``works_elsewhere``: the strategy extracts other layers of this model alone; ``outputs``:
    a layer's true value."""
    if works_elsewhere and layers and all(not_run(layer) for layer in layers):
        return "not_called", f"the module does not run for this input, and the strategy raises for it (it works on other layers): {describe_exception(exc)}"
    if _raised_while_tracing(exc):
        return "untraceable", f"FX cannot trace the model: {describe_exception(exc)}{_model_line(exc)}"
    if replay_error() == describe_exception(exc):
        return "children_not_chained", f"running the top-level children in registration order raises the same: {describe_exception(exc)}"
    if len(layers) == 1 and non_tensors(outputs(layers[0])):
        held = ", ".join(dict.fromkeys(non_tensors(outputs(layers[0]))))
        named = [name for name in re.findall(r"'([\w.]+)' object", str(exc)) if name in _type_names(outputs(layers[0]))]
        evidence = f"the error names its {named[0]}" if named else "the strategy works on other layers" if works_elsewhere else ""
        if evidence:
            return "non_tensor_output", (f"the module's output is not a tensor or a list or tuple of tensors (it holds {held}), "
                                         f"and the strategy raises for it ({evidence}): {describe_exception(exc)}")
    if len(layers) == 1 and works_elsewhere and _tensor_count(outputs(layers[0])) > 1:
        value = outputs(layers[0])
        return "multiple_outputs", (f"the module returns {_tensor_count(value)} tensors in a {type(value).__name__}, and the strategy "
                                    f"raises for it (it works on other layers): {describe_exception(exc)}")
    return None


def _tensor_count(value: Any) -> int:
    """How many tensors a returned value holds (a tuple, a named tuple, a dict, a dataclass)."""
    return sum(isinstance(leaf, torch.Tensor) for leaf in torch.utils._pytree.tree_leaves(tensor_tree(value)))


def _type_names(value: Any) -> set[str]:
    """The names, bare and qualified, of the types of everything in ``value`` but tensors."""
    if isinstance(value, torch.Tensor):
        return set()
    names = {type(value).__name__, f"{type(value).__module__}.{type(value).__qualname__}"}
    if isinstance(value, (list, tuple)):
        return names.union(*(_type_names(item) for item in value))
    if isinstance(value, dict):
        return names.union(*(_type_names(item) for item in value.values()))
    return names


#: Causes that belong to one layer: a request holding that layer fails for it.
_LAYER_CAUSES = {"not_called": "does not run for this input", "non_tensor_output": "returns more than tensors and lists or tuples of them",
                 "multiple_outputs": "returns more than one tensor"}


def explain_whole(*, exc: BaseException, whole: Cause, worked: set[str], alone: dict[str, Cause], reordered: bool = False) -> Cause:
    """The cause of a request that failed as a whole: its own, or, where every layer that fails
    alone fails for a cause of its own (``alone``: each failing layer's cause: its module does
    not run, it returns more than tensors) and the ``worked`` layers work without them, that
    (``reordered``: the worked layers work only requested in the order the model runs them)."""
    if whole is not None or not alone:
        return whole
    if not worked and not all(cause is not None and cause[0] in ("non_tensor_output", "multiple_outputs") for cause in alone.values()):
        return whole
    if all(cause is not None and cause[0] in _LAYER_CAUSES for cause in alone.values()):
        first = next(iter(alone.values()))[0]
        because = "; ".join(f"{layer} {_LAYER_CAUSES[cause[0]]}" for layer, cause in alone.items())
        how = ", requested in the order the model runs them; requested as given they fail too" if reordered else ""
        return first, f"the request fails as a whole because {because} (the other layers work without it{how}): {describe_exception(exc)}"
    return None


def request_order(*, exc: BaseException, in_order: Sequence[str]) -> Cause:
    """The cause of a request that fails as a whole, where the same layers requested in the order
    the model runs them (``in_order``) were extracted."""
    return "request_order", (f"the model runs the layers in another order than requested ({', '.join(in_order)}); "
                             f"requested in that order they are extracted: {describe_exception(exc)}")


def traced_optional_input(*, exc: BaseException, module: Any, x: torch.Tensor) -> Cause:
    """Where ``module`` runs a traced graph whose call raised: the graph's argument that defaults
    to ``None`` and that the node which raises takes, if there is one."""
    graphs = [m for m in module.modules() if isinstance(m, torch.fx.GraphModule)] if isinstance(module, torch.nn.Module) else []
    if len(graphs) != 1 or graphs[0] is not module:
        return None
    optional = {node for node in module.graph.nodes if node.op == "placeholder" and node.args == (None,)}
    failed: list[torch.fx.Node] = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> Any:
            try:
                return super().run_node(node)
            except Exception:
                failed.append(node)
                raise

    try:
        with torch.no_grad():
            Recorder(module).run(x)
    except Exception:
        pass
    if not failed or not optional:
        return None
    taken = [node.name for node in failed[0].all_input_nodes if node in optional]
    if not taken:
        return None
    return "traced_optional_input", (f"the trace made {taken[0]!r}, None by default, an input of the graph, which uses it "
                                     f"(node {failed[0].name!r}: the branch for a given {taken[0]}); called without it: "
                                     f"{describe_exception(exc)}")
