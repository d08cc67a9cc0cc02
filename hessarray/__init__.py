"""hessarray: exact gradients, Jacobians and Hessians of layered models on any array-API backend.

Build a model from layers holding your own arrays (NumPy, CuPy, torch, JAX, Dask, ...), then
ask for derivatives; results come back as arrays of the same kind, dtype and device.

>>> import numpy as np, hessarray as ha
>>> rng = np.random.default_rng(0)
>>> model = ha.Sequential(ha.Dense(rng.standard_normal((16, 2))), ha.Tanh(),
...                       ha.Dense(rng.standard_normal((1, 16))), ha.Sum())
>>> ha.hessian(model, rng.standard_normal((100, 2))).shape
(100, 2, 2)
"""

from .api import (
    Derivatives,
    derivatives,
    gradient,
    hessian,
    hessian_diagonal,
    hvp,
    jacobian,
    laplacian,
    plan,
)
from .convert import from_torch
from .engine.plan import Plan
from .io import load, save
from .layers import (
    ELU,
    Cos,
    Dense,
    Elementwise,
    Exp,
    Identity,
    Layer,
    LeakyReLU,
    LogCosh,
    MSELoss,
    Power,
    ReLU,
    Residual,
    Sigmoid,
    SiLU,
    Sin,
    SoftmaxCrossEntropy,
    Softplus,
    Square,
    Sum,
    Tanh,
)
from .model import Sequential
from .parameters import (
    ParameterOperator,
    gauss_newton,
    parameter_hessian,
    parameter_hvp,
    parameter_operator,
)

__version__ = "0.1.0"

__all__ = [
    "ELU",
    "Cos",
    "Dense",
    "Derivatives",
    "Elementwise",
    "Exp",
    "Identity",
    "Layer",
    "LeakyReLU",
    "LogCosh",
    "MSELoss",
    "ParameterOperator",
    "Plan",
    "Power",
    "ReLU",
    "Residual",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Sin",
    "SoftmaxCrossEntropy",
    "Softplus",
    "Square",
    "Sum",
    "Tanh",
    "derivatives",
    "from_torch",
    "gauss_newton",
    "gradient",
    "hessian",
    "hessian_diagonal",
    "hvp",
    "jacobian",
    "laplacian",
    "load",
    "parameter_hessian",
    "parameter_hvp",
    "parameter_operator",
    "plan",
    "save",
]
