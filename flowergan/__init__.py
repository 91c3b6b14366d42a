"""flowergan: DCGAN flower generation that trains from a laptop to a Kubernetes GPU cluster."""

__version__ = "0.1.0"
