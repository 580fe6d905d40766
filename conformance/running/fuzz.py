"""Generated models: a search of the space of forward passes for the kinds the suite gets wrong.

A :class:`Plan` is a small model as a list of blocks, each planting one mechanism the suite
knows (in-place ops through a module, a method, a view or ``+=``; a module reused or registered
twice; functional ops between children; keyword arguments; ``nn.Identity`` taps; tuple-returning
children; noise; lazy modules; ``.forward`` calls; dead in-place ops; train-only branches;
dropout). :func:`plans` draws them with Hypothesis; :meth:`Plan.source` writes the model as
Python, which is what is built (``exec``) and what a shrunk counterexample prints.

The generator computes the true activation of every tapped module itself (:func:`true_values`:
the plan interpreted with functional ops on the model's own weights, every value a new tensor),
independently of the suite's oracle. The property (:func:`judge`): for every strategy, the
suite's ``values`` verdict equals a direct comparison of that strategy's output with the
generator's truth, and every failure is named by a diagnosis of a mechanism the plan planted.

    conformance fuzz --models 2000 --jobs 2 --out reports/fuzz-cpu
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from strategies import get_strategy

from conformance.core.compare import compare
from conformance.core.rng import pass_rng
from conformance.core.timing import own_copy

__all__ = ["BLOCKS", "REGRESSIONS", "Block", "Outcome", "Plan", "judge", "merge_summaries", "plans", "run_fuzz", "true_values", "write_report"]

INPUT_SHAPE = (2, 3, 6, 6)
CHANNELS = 4
#: The strategies the property is checked for: every one that runs on any model.
STRATEGIES = ("stash", "stash+clone", "hooks", "hooks+clone", "ilg", "torchextractor", "torchextractor+clone", "fx")

#: Diagnoses that name what a strategy's own API does with any model (FX binding a module's
#: name to a node, a container's name to its last child's): allowed wherever the plan has taps.
_NAMING = {"wrong_layer", "wrong_node", "shared_output"}


@dataclass(frozen=True)
class Block:
    """One step of a generated forward pass: the mechanism it plants and the diagnoses that name it."""

    kind: str
    constant: float = 1.0
    other: int = -1  # the earlier block a reuse or an alias refers to


#: kind -> (what it plants, the diagnoses that may name a value it makes wrong)
_CHAIN = "children_not_chained"  # code of the model's own forward runs between its children: replaying them skips it
_DEAD = "dead_code_eliminated"  # FX drops an op whose result no requested output uses, after the last one too
BLOCKS: dict[str, tuple[str, frozenset[str]]] = {
    "conv": ("a convolution child", frozenset()),
    "relu_inplace": ("an in-place ReLU child (nn.ReLU(inplace=True))", frozenset({"inplace_aliasing"})),
    "inplace_method": ("an in-place method whose result is used (h = h.mul_(c))", frozenset({"inplace_aliasing", _DEAD, _CHAIN})),
    "dead_inplace": ("an in-place op whose result is unused (h.add_(c))", frozenset({"inplace_aliasing", _DEAD, _CHAIN})),
    "inplace_view": ("an in-place op through a view (h[:, :1].mul_(c))", frozenset({"inplace_aliasing", _DEAD, _CHAIN})),
    "residual": ("a += residual over a child (h += self.bK(h))", frozenset({"inplace_aliasing", _DEAD, _CHAIN})),
    "functional": ("a functional op between children (torch.tanh(h) * c)", frozenset({_CHAIN})),
    "reuse": ("an earlier convolution called again", frozenset({"reused_module", _CHAIN})),
    "alias": ("an earlier convolution registered under a second name", frozenset({"reused_module", "registered_twice", _CHAIN})),
    "kwargs": ("a child called with a keyword argument", frozenset({"kwargs_dropped", _CHAIN})),
    "identity": ("an nn.Identity tap", frozenset()),
    "pair": ("a child returning a tuple (a map and its mean)", frozenset({"partial_output", _CHAIN})),
    "noise": ("noise drawn in eval mode (h + randn_like(h) * c)", frozenset({_CHAIN})),
    "lazy": ("a lazy convolution (nn.LazyConv2d)", frozenset()),
    "forward_call": ("a child run through .forward(h)", frozenset({"call_bypassed"})),
    "train_only": ("a child that runs in train mode only", frozenset({_CHAIN})),
    "dropout": ("an nn.Dropout child", frozenset()),
    "sequential": ("an nn.Sequential of a convolution and an in-place ReLU", frozenset({"inplace_aliasing"})),
}

#: Helper classes a plan's source may use, written out in front of it.
_HELPERS = {
    "kwargs": '''class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 1, 1))

    def forward(self, x, scale=1.0):
        return x * self.weight * scale
''',
    "pair": '''class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean()
''',
}


@dataclass(frozen=True)
class Plan:
    """A generated model: a stem convolution, then the blocks in order."""

    blocks: tuple[Block, ...]

    def name(self, index: int) -> str:
        return f"b{index}"

    def source(self) -> str:
        """The model as Python: helper classes, then ``class Generated(nn.Module)``."""
        init = ["self.stem = nn.Conv2d(3, 4, 1)"]
        body = ["h = self.stem(x)"]
        for index, block in enumerate(self.blocks):
            name, c = self.name(index), f"{block.constant:g}"
            other = self.name(block.other) if block.other >= 0 else ""
            kind = block.kind
            if kind in ("conv", "forward_call", "residual", "train_only"):
                init.append(f"self.{name} = nn.Conv2d(4, 4, 3, padding=1)")
            body.append({
                "conv": f"h = self.{name}(h)",
                "relu_inplace": f"h = self.{name}(h)",
                "inplace_method": f"h = h.mul_({c})",
                "dead_inplace": f"h.add_({c})",
                "inplace_view": f"h[:, :1].mul_({c})",
                "residual": f"h += self.{name}(h)",
                "functional": f"h = torch.tanh(h) * {c}",
                "reuse": f"h = self.{other}(h)",
                "alias": f"h = self.{name}(h)",
                "kwargs": f"h = self.{name}(h, scale={c})",
                "identity": f"h = self.{name}(h)",
                "pair": f"h, m = self.{name}(h)\n        h = h - m",
                "noise": f"h = h + torch.randn_like(h) * {c}",
                "lazy": f"h = self.{name}(h)",
                "forward_call": f"h = self.{name}.forward(h)",
                "train_only": f"if self.training:\n            h = h + self.{name}(h)",
                "dropout": f"h = self.{name}(h)",
                "sequential": f"h = self.{name}(h)",
            }[kind])
            init += {
                "relu_inplace": [f"self.{name} = nn.ReLU(inplace=True)"],
                "alias": [f"self.{name} = self.{other}"],
                "kwargs": [f"self.{name} = Scale()"],
                "identity": [f"self.{name} = nn.Identity()"],
                "pair": [f"self.{name} = Pair()"],
                "lazy": [f"self.{name} = nn.LazyConv2d(4, 1)"],
                "dropout": [f"self.{name} = nn.Dropout(0.5)"],
                "sequential": [f"self.{name} = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True))"],
            }.get(kind, [])
        helpers = [_HELPERS[kind] for kind in _HELPERS if any(block.kind == kind for block in self.blocks)]
        lines = [*helpers, "class Generated(nn.Module):", "    def __init__(self):", "        super().__init__()",
                 *(f"        {line}" for line in init), "", "    def forward(self, x):",
                 *(f"        {line}" for line in body), "        return h", ""]
        return "\n".join(lines)

    def build(self, *, seed: int = 0) -> nn.Module:
        """The model, built from :meth:`source` with weights from ``seed``, in eval mode."""
        namespace: dict[str, Any] = {"torch": torch, "nn": nn}
        exec(compile(self.source(), "<generated model>", "exec"), namespace)  # noqa: S102: the generator's own source
        torch.manual_seed(seed)
        return namespace["Generated"]().eval()

    def taps(self) -> list[str]:
        """Every module a user could request: the stem and each block's child (and its inner modules)."""
        taps = ["stem"]
        for index, block in enumerate(self.blocks):
            name = self.name(index)
            if block.kind in ("inplace_method", "dead_inplace", "inplace_view", "functional", "noise", "reuse"):
                continue
            taps.append(name)
            if block.kind == "pair":
                taps.append(f"{name}.conv")
            if block.kind == "sequential":
                taps += [f"{name}.0", f"{name}.1"]
        return taps

    def planted(self) -> set[str]:
        """The diagnoses that may name a wrong value of this model: its blocks' mechanisms, and naming."""
        allowed = set(_NAMING)
        for block in self.blocks:
            allowed |= BLOCKS[block.kind][1]
        return allowed


#: The disagreements the generator found, each shrunk to its minimal plan, and what fixed it;
#: every one runs again as an explicit example of the property (``tests/test_fuzz.py``).
REGRESSIONS: tuple[tuple[Plan, str, str], ...] = (
    (Plan((Block("noise", 0.5), Block("conv"))), "b1: every right strategy fail/unexplained",
     "RNG discipline: the truth and every strategy's pass start from one random state (conformance.core.rng)"),
    (Plan((Block("lazy"),)), "every row error/oracle_failed (a deep copy of an uninitialised parameter)",
     "lazy modules materialised by one pass before any copy (conformance.zoo.specs.materialise)"),
    (Plan((Block("pair"),)), "stash, stash+clone b0: fail/missing (the adapter stored tensors only)",
     "stash stores the output as the module returns it, each tensor detached"),
    (Plan((Block("forward_call"),)), "b0: 'the module does not run for this input' for every strategy",
     "the oracle observes a forward run without __call__ (conformance.truth.oracle.on_output); hooks get call_bypassed"),
    (Plan((Block("conv"), Block("functional", 2.0), Block("relu_inplace"))), "ilg b0: fail/unexplained",
     "children_not_chained tries the replay as the replay left it: children_not_chained+inplace_aliasing"),
    (Plan((Block("conv"), Block("dead_inplace", 0.5), Block("relu_inplace"))), "fx b0: fail/unexplained",
     "dead_code_eliminated tries the pass without the dead ops as it left the value: dead_code_eliminated+inplace_aliasing"),
    (Plan((Block("dead_inplace", 0.5), Block("pair"))), "fx b1: fail/unexplained (a node's value of the pass without the dead op)",
     "dead_code_eliminated looks for the value among the nodes of that pass: dead_code_eliminated+wrong_node"),
    (Plan((Block("conv"), Block("alias", other=0))), "the suite raised: no module 'b1' (named_modules drops a second name)",
     "layer names resolve against every registered name; a library that knows one name gets registered_twice"),
    (Plan((Block("sequential"),)), "fx b0.1: fail/missing", "a name FX returns once for two layers of one value: shared_output"),
    (Plan((Block("kwargs", 0.5), Block("kwargs", 0.5))), "ilg b1: fail/unexplained",
     "kwargs_dropped also drops every module's keywords at once, as a replay of the children does"),
    (Plan((Block("kwargs", 0.5), Block("relu_inplace"))), "ilg b0: fail/unexplained",
     "kwargs_dropped tries that run as it left the value: kwargs_dropped+inplace_aliasing"),
    (Plan((Block("conv"), Block("reuse", other=0), Block("alias", other=0))), "b0: nondeterministic_model on a deterministic model",
     "the oracle removes the wrappers of one module in the reverse order of registering them"),
    (Plan((Block("pair"), Block("conv"), Block("inplace_method", 0.5))),
     "fx b0: dead_code_eliminated+wrong_node, where the pass as it is has the node (the graph, cut at b1, lacks the mul_ after it)",
     "dead_code_eliminated+wrong_node only where no node of the pass as it is has the value: wrong_node"),
    (Plan((Block("inplace_method", 0.5), Block("dead_inplace", 0.5), Block("conv"), Block("reuse", other=2))),
     "fx b2: fail/unexplained (FX binds a reused module's name to its first call, computed without the dead add_)",
     "a run with one change is read at every call of the module too: dead_code_eliminated+reused_module"),
    (Plan((Block("inplace_method", 0.5), Block("forward_call"))),
     "ilg b1: fail/unexplained (the chain of children looked whole: b1's forward ran without its hooks)",
     "the oracle sees a child's forward run without __call__ when it checks the chain of children"),
    (Plan((Block("inplace_method", 0.5), Block("inplace_view", 0.5), Block("inplace_view", 0.5), Block("conv"))),
     "fx b3: fail/unexplained (the graph keeps one of three mul_ calls, the used one)",
     "dead_code_eliminated tries every choice of as many calls as the graph lacks"),
)


def true_values(plan: Plan, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The true activation of every tap, by interpreting ``plan`` with functional ops on
    ``model``'s weights (every value a new tensor; noise drawn from the passes' random state):
    a module's output at its last call, ``None`` for one that does not run."""
    values: dict[str, Any] = {}

    def conv(path: str, h: torch.Tensor, padding: int = 1) -> torch.Tensor:
        module = model.get_submodule(path)
        return F.conv2d(h, module.weight, module.bias, padding=padding)

    with torch.no_grad(), pass_rng():
        h = values["stem"] = conv("stem", x, padding=0)
        for index, block in enumerate(plan.blocks):
            name, c, kind = plan.name(index), block.constant, block.kind
            other = plan.name(block.other) if block.other >= 0 else ""
            if kind in ("conv", "forward_call"):
                h = values[name] = conv(name, h)
            elif kind == "relu_inplace":
                h = values[name] = F.relu(h)
            elif kind == "inplace_method":
                h = h * c
            elif kind == "dead_inplace":
                h = h + c
            elif kind == "inplace_view":
                h = torch.cat([h[:, :1] * c, h[:, 1:]], dim=1)
            elif kind == "residual":
                values[name] = conv(name, h)
                h = h + values[name]
            elif kind == "functional":
                h = torch.tanh(h) * c
            elif kind == "reuse":
                h = values[other] = conv(other, h)
                _alias_values(plan, values, block.other)
            elif kind == "alias":
                h = values[name] = conv(other, h)
                _alias_values(plan, values, index)
            elif kind == "kwargs":
                h = values[name] = h * model.get_submodule(name).weight * c
            elif kind in ("identity", "dropout"):
                h = values[name] = h
            elif kind == "pair":
                y = values[f"{name}.conv"] = conv(f"{name}.conv", h)
                values[name] = (y, y.mean())
                h = y - y.mean()
            elif kind == "noise":
                h = h + torch.randn_like(h) * c
            elif kind == "lazy":
                h = values[name] = conv(name, h, padding=0)
            elif kind == "train_only":
                values[name] = None
            elif kind == "sequential":
                values[f"{name}.0"] = conv(f"{name}.0", h)
                h = values[name] = values[f"{name}.1"] = F.relu(values[f"{name}.0"])
    return {tap: values.get(tap) for tap in plan.taps()}


def _alias_values(plan: Plan, values: dict[str, Any], index: int) -> None:
    """Every name of the module block ``index`` calls now holds its last call's value."""
    target = plan.blocks[index].other if plan.blocks[index].kind == "alias" else index
    value = values[plan.name(index)] if plan.blocks[index].kind == "alias" else values[plan.name(target)]
    for position, block in enumerate(plan.blocks):
        if position == target or (block.kind == "alias" and block.other == target):
            values[plan.name(position)] = value


def plans(*, max_blocks: int = 6) -> Any:
    """The Hypothesis strategy of plans: 1 to ``max_blocks`` blocks of any kind, constants from a
    few values that keep the numbers readable, reuses and aliases of an earlier convolution."""
    from hypothesis import strategies as st

    constants = st.sampled_from([0.5, 2.0, -1.0, 3.0])

    @st.composite
    def draw_plan(draw: Callable[..., Any]) -> Plan:
        blocks: list[Block] = []
        for _ in range(draw(st.integers(1, max_blocks))):
            convs = [i for i, block in enumerate(blocks) if block.kind == "conv"]
            kinds = [kind for kind in BLOCKS if kind not in ("reuse", "alias") or convs]
            kind = draw(st.sampled_from(kinds))
            other = draw(st.sampled_from(convs)) if kind in ("reuse", "alias") else -1
            blocks.append(Block(kind, draw(constants), other))
        return Plan(tuple(blocks))

    return draw_plan()


@dataclass
class Outcome:
    """What :func:`judge` found on one plan: the disagreements between the suite's verdict and
    the direct comparison, and the rows no mechanism explains."""

    rows: int = 0
    disagreements: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    misnamed: list[str] = field(default_factory=list)  # failures named by a mechanism the plan did not plant
    crash: str = ""

    @property
    def ok(self) -> bool:
        return not (self.disagreements or self.unexplained or self.misnamed or self.crash)

    def describe(self) -> str:
        return "; ".join([*self.disagreements, *self.unexplained, *self.misnamed, *([self.crash] if self.crash else [])])


def _direct(strategy_name: str, model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> dict[str, Any] | None:
    """The strategy's features for ``layers``, attached to a copy of ``model`` as a user would,
    called once from the passes' random state; ``None`` where it cannot be had."""
    extractor = None
    try:
        extractor = get_strategy(strategy_name).attach(own_copy(model), layers=list(layers))
        with torch.no_grad(), pass_rng():
            features = extractor(x).features
        return {name: value for name, value in features.items()}
    except Exception:  # Unsupported among them: the request cannot be had as a whole
        return None
    finally:
        if extractor is not None:
            extractor.close()


def judge(plan: Plan, *, strategies: Sequence[str] = STRATEGIES) -> Outcome:
    """Run the suite's ``values`` check on the plan's model and hold each row against the
    generator's truth and the strategy's own output (see the module's docstring)."""
    from conformance.running.runner import evaluate

    outcome = Outcome()
    model = plan.build()
    layers = plan.taps()
    try:
        rows = evaluate(model, layers=layers, strategies=list(strategies), checks=["values"], input_shape=INPUT_SHAPE)
    except Exception as exc:  # the suite itself crashed: the worst outcome
        outcome.crash = f"the suite raised {type(exc).__name__}: {exc}"
        return outcome
    x = torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    truth = true_values(plan, model, x)
    allowed = plan.planted()
    outcome.rows = len(rows)
    for strategy_name, group in rows.groupby("strategy", sort=False):
        whole = None
        served = [layer for layer in layers if layer not in set(group.loc[group.status == "unsupported", "layer"])]
        for row in group.itertuples():
            where = f"{strategy_name} {row.layer}"
            if row.diagnosis == "unexplained" or (row.status == "error" and row.diagnosis in ("", "call_failed", "build_failed", "check_failed", "oracle_failed")):
                outcome.unexplained.append(f"{where}: {row.status} {row.diagnosis}: {row.detail}")
                continue
            if row.status not in ("pass", "fail"):
                continue
            alone = "requested alone" in row.detail or "requested without" in row.detail
            if alone:
                got = _direct(strategy_name, model, [row.layer], x)
            else:
                whole = whole if whole is not None else _direct(strategy_name, model, served, x) or {}
                got = whole
            expected = truth[row.layer]
            if got is None:
                outcome.disagreements.append(f"{where}: the suite says {row.status}, the strategy cannot be run directly")
                continue
            right = (expected is None and row.layer not in got) or (
                expected is not None and row.layer in got and compare(got[row.layer], expected).close)
            if right != (row.status == "pass") and not (expected is None and row.diagnosis == "not_called"):
                outcome.disagreements.append(f"{where}: the suite says {row.status} ({row.diagnosis}), the generator's truth says "
                                             f"{'right' if right else 'wrong'}")
            elif row.status == "fail" and row.diagnosis not in ("not_called",) and not set(row.diagnosis.split("+")) <= allowed:
                outcome.misnamed.append(f"{where}: {row.diagnosis}, not a mechanism the plan planted ({', '.join(sorted(allowed))})")
    return outcome


def run_fuzz(*, models: int, seed: int = 0, strategies: Sequence[str] = STRATEGIES,
             progress: Callable[[int, Outcome], None] | None = None) -> dict[str, Any]:
    """Judge ``models`` generated plans (Hypothesis, its random draws from ``seed``) and return the
    summary: the plans judged, their rows, and the disagreements; on the first, Hypothesis shrinks
    it to a minimal plan (the plans it tries on the way are counted too), whose source the
    summary carries."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    counts = {"models": 0, "rows": 0, "disagreements": 0, "crashes": 0, "unexplained": 0, "misnamed": 0}
    kinds: dict[str, int] = {kind: 0 for kind in BLOCKS}
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    last: list[tuple[Plan, Outcome]] = []

    @hypothesis_seed(seed)
    @settings(max_examples=models, deadline=None, database=None, print_blob=False, suppress_health_check=list(HealthCheck))
    @given(plans())
    def property_holds(plan: Plan) -> None:
        outcome = judge(plan, strategies=strategies)
        last[:] = [(plan, outcome)]
        counts["models"] += 1
        counts["rows"] += outcome.rows
        for block in plan.blocks:
            kinds[block.kind] += 1
        if not outcome.ok:
            raise AssertionError(outcome.describe())
        if progress is not None:
            progress(counts["models"], outcome)

    try:
        property_holds()
    except AssertionError:
        plan, outcome = last[0]
        counts["disagreements"] += bool(outcome.disagreements or outcome.misnamed)
        counts["crashes"] += bool(outcome.crash)
        counts["unexplained"] += len(outcome.unexplained)
        counts["misnamed"] += len(outcome.misnamed)
        failures.append({"source": plan.source(), "taps": plan.taps(), "found": outcome.describe()})
    return {**counts, "seeds": [seed], "seconds": round(time.perf_counter() - started, 1), "strategies": list(strategies),
            "check": "values", "blocks_drawn": kinds, "minimal_failures": failures}


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several runs (other seeds): counts and blocks added, failures put together."""
    merged = dict(summaries[0])
    for summary in summaries[1:]:
        for key in ("models", "rows", "disagreements", "crashes", "unexplained", "misnamed"):
            merged[key] += summary[key]
        merged["seeds"] = merged["seeds"] + summary["seeds"]
        merged["seconds"] = max(merged["seconds"], summary["seconds"])
        merged["blocks_drawn"] = {kind: count + summary["blocks_drawn"][kind] for kind, count in merged["blocks_drawn"].items()}
        merged["minimal_failures"] = merged["minimal_failures"] + summary["minimal_failures"]
    return merged


def write_report(summary: dict[str, Any], out: Path) -> None:
    """``summary.json`` (with the disagreements found and fixed on the way, :data:`REGRESSIONS`) and a README."""
    document = {**summary, "found_and_fixed": [{"source": plan.source(), "taps": plan.taps(), "found": found, "fixed": fixed}
                                               for plan, found, fixed in REGRESSIONS]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(document, indent=2) + "\n")
    blocks = "\n".join(f"| `{kind}` | {BLOCKS[kind][0]} | {count} | {', '.join(sorted(BLOCKS[kind][1])) or '-'} |"
                       for kind, count in summary["blocks_drawn"].items())
    found = "\n".join(f"{index}. {found}. Fixed: {fixed}.\n\n   ```python\n"
                      + "\n".join(f"   {line}" if line else "" for line in plan.source().splitlines()) + "\n   ```\n"
                      for index, (plan, found, fixed) in enumerate(REGRESSIONS, start=1))
    open_failures = "\n".join(f"- {failure['found']}\n\n```python\n{failure['source']}```\n" for failure in summary["minimal_failures"]) or "None."
    (out / "README.md").write_text(f"""# Generated models: the suite's `values` verdicts against the generator's own truth

`conformance fuzz --models {summary['models']} --jobs {len(summary['seeds'])} --out {out}`: {summary['models']} models drawn by
Hypothesis (seeds {', '.join(map(str, summary['seeds']))}), {summary['rows']} rows of the strategies {', '.join(summary['strategies'])},
in {summary['seconds']:.0f} s.

| models | rows | disagreements | crashes | unexplained | misnamed |
| --- | --- | --- | --- | --- | --- |
| {summary['models']} | {summary['rows']} | {summary['disagreements']} | {summary['crashes']} | {summary['unexplained']} | {summary['misnamed']} |

The property, for every row: the suite's verdict equals a direct comparison of the strategy's output
with the true activation the generator computes itself (functional ops on the model's weights,
independently of the suite's oracle); no row is `unexplained`; and every failure is named by a
diagnosis of a mechanism the model planted (or by the names FX gives nodes: `wrong_layer`,
`wrong_node`, `shared_output`). Disagreements still open, shrunk to their minimal model:

{open_failures}

## Blocks

| block | plants | drawn | diagnoses it may cause |
| --- | --- | --- | --- |
{blocks}

## Found and fixed on the way

Each shrunk to its minimal model by Hypothesis; each runs again as an explicit example in `tests/test_fuzz.py`.

{found}""")
