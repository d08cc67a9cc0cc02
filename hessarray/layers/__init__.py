"""Layers: each knows its own local first and second derivatives (see :mod:`.base`)."""

from .base import Layer
from .dense import Dense
from .elementwise import (
    ELU,
    Activation,
    Cos,
    Elementwise,
    Exp,
    Identity,
    LeakyReLU,
    LogCosh,
    Power,
    ReLU,
    Sigmoid,
    SiLU,
    Sin,
    Softplus,
    Square,
    Tanh,
)
from .losses import MSELoss, Reduction, SoftmaxCrossEntropy, Sum
from .residual import Residual

__all__ = [
    "ELU",
    "Activation",
    "Cos",
    "Dense",
    "Elementwise",
    "Exp",
    "Identity",
    "Layer",
    "LeakyReLU",
    "LogCosh",
    "MSELoss",
    "Power",
    "ReLU",
    "Reduction",
    "Residual",
    "SiLU",
    "Sigmoid",
    "Sin",
    "SoftmaxCrossEntropy",
    "Softplus",
    "Square",
    "Sum",
    "Tanh",
]
