"""The quickstart notebook runs top to bottom on a few real faces."""

import json
import os
import pathlib
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
KERNEL_NAME = "faceage-keras-test"
# The torch thread count of the tests, as in conftest.py. The kernel receives it as OMP_NUM_THREADS.
THREADS_ENV_VAR = "FACEAGE_TEST_TORCH_THREADS"
# Small enough for about a minute on 2 CPU cores. The split drops ages with a
# single face and leaves 100 faces (80 train, 10 validation, 10 test) at 64 px, for one epoch.
NOTEBOOK_SETTINGS = {
    "FACEAGE_NOTEBOOK_FACES": "120",
    "FACEAGE_NOTEBOOK_IMAGE_SIZE": "64",
    "FACEAGE_NOTEBOOK_EPOCHS": "1",
    "FACEAGE_NOTEBOOK_BATCH_SIZE": "16",
}


def _write_kernelspec(root):
    """Write a kernelspec that starts this test's Python interpreter, and return the folder for JUPYTER_PATH."""
    folder = root / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "faceage_keras test",
        "language": "python",
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    return root


@pytest.mark.slow
def test_quickstart_notebook_runs(utkface_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(_write_kernelspec(tmp_path / "jupyter")))
    monkeypatch.setenv("FACEAGE_DATA", str(utkface_dir))
    monkeypatch.setenv("FACEAGE_NOTEBOOK_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get(THREADS_ENV_VAR, "1"))
    # The kernel imports faceage_keras from this checkout, not from wherever the package is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for name, value in NOTEBOOK_SETTINGS.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, kernel_name=KERNEL_NAME, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )

    started = time.monotonic()
    client.execute()
    print(f"quickstart notebook ran in {time.monotonic() - started:.1f} s")

    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if {"image/png", "image/jpeg"} & set(output.get("data", {}))
    ]
    assert "Test MAE (group centre):" in printed, "the evaluation cell printed no test MAE"
    # The scatter plot, the group-wise MAE bars and the predicted faces.
    assert len(images) == 3, f"expected 3 figures in the outputs, found {len(images)}"
    assert (tmp_path / "output" / "m4.keras").is_file(), "the notebook saved no model"


def test_saved_notebook_has_outputs():
    # The repository page shows the saved outputs, so the notebook is committed executed and small.
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    unexecuted = [index for index, cell in enumerate(code_cells) if cell.execution_count is None]
    errors = [index for index, cell in enumerate(code_cells) for output in cell.outputs if output.output_type == "error"]

    assert not unexecuted, f"code cells {unexecuted} were saved without being executed"
    assert not errors, f"code cells {errors} were saved with an error output"
    assert NOTEBOOK.stat().st_size < 2_000_000, f"the saved notebook has {NOTEBOOK.stat().st_size:,} bytes"
