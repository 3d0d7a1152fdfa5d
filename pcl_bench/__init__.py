"""pcl-bench: Prototypical Contrastive Learning and its baselines, with the PCL paper's protocols."""

__version__ = "0.1.0"
