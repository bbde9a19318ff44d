"""icm-backend: unsupervised labelling by Internal Coherence Maximization, served to Label Studio."""

__version__ = "0.1.0"
