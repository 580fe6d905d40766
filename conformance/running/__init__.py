"""Running: one model's units (runner), where they run (executors), a whole run (schedule), generated models (fuzz)."""
