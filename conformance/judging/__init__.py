"""Judging: the value checks, the behaviour checks, the diagnoses of a wrong value, the causes of an error, the check profiles."""
