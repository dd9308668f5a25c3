"""sdbnn-deploy: the deployment toolchain for Self-Distribution Binary Neural Networks (SD-BNN)."""

__version__ = "0.1.0"
