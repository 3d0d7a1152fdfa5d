"""Pretraining: the engine (one loop for every method), PCL's E-step (k-means, concentration, cluster
statistics) and the learning-rate sweep."""
