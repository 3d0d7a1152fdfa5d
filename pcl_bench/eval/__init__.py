"""Evaluation: the protocol runner and its TOML specs, frozen features and their cache, one module per protocol
(low-shot SVM, linear probe, kNN, semi-supervised fine-tuning, AMI, detection) and the results store."""
