"""Evidence: tidy rows and their files, reports, publishing, diffs, manifests, fingerprints and noise, recommendations, costs."""
