"""The truth: the independent oracle, the op-level recorder, layer specs and what each strategy can express."""
