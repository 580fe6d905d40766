"""Model specs and the built model: the zoo, its families, model references and how a model is built."""
