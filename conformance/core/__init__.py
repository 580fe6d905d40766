"""The foundation every stage stands on: errors for users, timing and model copies, the allocator, the passes' random state, value comparison, the environment."""
