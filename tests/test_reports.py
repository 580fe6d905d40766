"""The capability matrix and the headline, on rows with known verdicts."""

import pandas as pd

from conformance.evidence.reports import capability_matrix, cell_models, failing_models, headline, hf_readings
from conformance.evidence.results import summary_table


def frame(rows):
    return pd.DataFrame(rows, columns=["model", "strategy", "layer", "check", "status", "diagnosis", "detail"])


ROWS = frame([
    # a: both layers pass; b: one layer fails; c: everything skipped; d: one layer unsupported (a partial pass)
    ("a", "hooks", "x", "values", "pass", "", ""), ("a", "hooks", "y", "values", "pass", "", ""),
    ("b", "hooks", "x", "values", "pass", "", ""), ("b", "hooks", "y", "values", "fail", "inplace_aliasing", "post-ReLU"),
    ("c", "hooks", "x", "values", "skipped", "not_called", ""),
    ("d", "hooks", "x", "values", "pass", "", ""), ("d", "hooks", "y", "values", "unsupported", "", "nested"),
    ("e", "hooks", "x", "keys", "unsupported", "", "nested"),
    ("a", "fx", "*", "jit_script", "skipped", "", ""),
    ("a", "hooks", "*", "jit_script", "error", "check_failed", "boom"),
])


def test_cells_count_models_by_their_worst_row():
    matrix = capability_matrix(ROWS)
    assert matrix.loc["values", "hooks"] == "2/3 pass (1 fail, 1 partial)"
    assert matrix.loc["jit_script", "hooks"] == "0/1 pass (1 error)"
    assert matrix.loc["jit_script", "fx"] == "n/a"  # every model skipped
    assert matrix.loc["keys", "hooks"] == "0/1 pass (1 unsupported)"
    assert matrix.loc["values", "fx"] == "n/a"  # never run
    assert list(matrix.index) == ["values", "keys", "jit_script"] and list(matrix.columns) == ["hooks", "fx"]


def test_the_models_behind_a_cell_come_failing_first_with_their_layers():
    cell = cell_models(ROWS, strategy="hooks", check="values")
    assert list(cell["model"]) == ["b", "a", "d", "c"]
    assert cell.set_index("model")["partial"].to_dict() == {"a": False, "b": False, "c": False, "d": True}
    assert cell.iloc[0][["status", "layers", "diagnosis"]].tolist() == ["fail", "y", "inplace_aliasing"]


def test_the_headline_counts_failures_by_mechanism_and_the_unexplained_ones():
    rows = pd.concat([ROWS, frame([("f", "fx", "x", "values", "fail", "unexplained", "no mechanism"),
                                   ("f", "fx", "y", "shape", "fail", "", "no diagnosis at all")])], ignore_index=True)
    counts = headline(rows).set_index("what")["rows"]
    assert counts["failures"] == 3 and counts["  unexplained"] == 2 and counts["  inplace_aliasing"] == 1
    assert counts["errors"] == 1 and counts["  check_failed"] == 1 and counts["models"] == 6
    query = headline(rows).set_index("what").loc["  unexplained", "query"]
    assert len(rows.query(query)) == 2  # the query selects exactly the rows it counts


def test_strategies_come_in_the_registry_order_whatever_order_the_units_were_written_in():
    """Workers and resumed runs write units in any order; the tables do not follow it (control:
    a strategy no registry knows keeps its place after the known ones)."""
    rows = frame([
        ("a", "plugin", "x", "values", "pass", "", ""), ("a", "fx", "x", "values", "pass", "", ""),
        ("a", "hooks", "x", "values", "fail", "inplace_aliasing", ""), ("a", "stash", "x", "values", "fail", "inplace_aliasing", ""),
    ])
    assert list(capability_matrix(rows).columns) == ["stash", "hooks", "fx", "plugin"]
    assert list(summary_table(rows).index) == ["stash", "hooks", "fx", "plugin"]
    assert list(failing_models(rows)["strategy"]) == ["stash", "hooks"]
    assert list(capability_matrix(rows.iloc[::-1]).columns) == ["stash", "hooks", "fx", "plugin"]


def test_the_hugging_face_table_says_what_each_hidden_state_and_stage_holds_in_index_order():
    rows = frame([
        ("hf:m", "hf-hidden-states", "layernorm", "values", "fail", "wrong_layer", "matches module 'encoder.layer.1'"),
        ("hf:m", "hf-hidden-states", "encoder.layer.0", "values", "pass", "", ""),
        ("hf:m", "hf-backbone", "encoder.layer.0", "values", "fail", "post_processed",
         "shape (2, 8, 4, 4), expected (2, 17, 8); the true value through the strategy's own LayerNorm 'layernorm'"),
        ("hf:m", "hf-hidden-states", "embeddings", "values", "pass", "", ""),
        ("hf:m", "hooks", "embeddings", "values", "pass", "", ""),  # another strategy: not in the table
        ("hf:m", "hf-hidden-states", "pooler", "values", "unsupported", "", "no hidden state"),  # no reading: left out
        ("hf:p", "hf-hidden-states", "encoder.block.1.0", "values", "pass", "", ""),  # a stage that is a list of blocks
    ])
    table = hf_readings(rows)
    assert table["read as"].tolist() == ["hidden_states[0]", "hidden_states[1]", "last_hidden_state", "hidden_states[2]"]
    assert table["module"].tolist() == ["embeddings", "encoder.layer.0", "layernorm", "encoder.block.1.0"]
    assert table["hidden_states gives"].tolist() == ["the module's output", "the module's output", "fail wrong_layer: matches module 'encoder.layer.1'",
                                                     "the module's output"]
    assert table["out_features"].tolist() == ["stem", "stage1", "", "stage2"]
    assert table["backbone gives"].tolist() == ["", "fail post_processed: the true value through the strategy's own LayerNorm 'layernorm'", "", ""]
    assert hf_readings(ROWS).empty  # no Hugging Face strategy ran

