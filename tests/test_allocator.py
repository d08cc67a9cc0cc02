"""The glibc allocator setting made on the first CPU computation (hessarray/_numpy/allocator.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

SCRIPT = """
import numpy as np, hessarray as ha
from hessarray._numpy import allocator
assert not allocator._done
ha.hessian(ha.Sequential(ha.Tanh(), ha.Sum()), np.ones((3, 2)))
print(allocator._done, allocator._applied)
"""


def run(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("HESSARRAY_MALLOC", None)
    if env_value is not None:
        env["HESSARRAY_MALLOC"] = env_value
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_first_cpu_call_sets_the_allocator():
    assert run(None) == ["True", str(GLIBC)]


@pytest.mark.parametrize("value", ["0", "off"])
def test_environment_leaves_the_allocator_alone(value):
    assert run(value) == ["True", "False"]


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_settings_are_accepted():
    from hessarray import _delegation

    assert _delegation.keep_freed_memory() is True
