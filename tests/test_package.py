"""The package's choice of the Keras backend at import time."""

import os
import subprocess
import sys

import pytest


def _python(code, **env_overrides):
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("env", [{}, {"KERAS_BACKEND": "torch"}], ids=["unset", "torch"])
def test_import_selects_torch_backend(env):
    result = _python("import faceage_keras, keras; print(keras.backend.backend())", **env)

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("torch"), f"backend is {result.stdout!r}"


def test_import_replaces_other_backend_with_warning():
    result = _python("import faceage_keras, keras; print(keras.backend.backend())", KERAS_BACKEND="jax")

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("torch"), f"backend is {result.stdout!r}"
    assert "KERAS_BACKEND='jax' is replaced by 'torch'" in result.stderr, "no warning about the replaced backend"


def test_import_after_keras_with_other_backend_raises():
    # Neither jax nor tensorflow is installed here, so a stand-in keras module
    # that reports the jax backend takes the place of a real one.
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('keras')\n"
        "fake.backend = types.SimpleNamespace(backend=lambda: 'jax')\n"
        "sys.modules['keras'] = fake\n"
        "import faceage_keras\n"
    )
    result = _python(code)

    assert result.returncode != 0, "importing after a jax-backend keras did not fail"
    assert "ImportError" in result.stderr, result.stderr[-2000:]
    assert "KERAS_BACKEND=torch" in result.stderr, "the error does not name the fix"
