"""notebooks/quickstart.ipynb runs top to bottom (tiny model, a handful of man pages)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tiny_model_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel installed")
    if not Path("/usr/share/man/man1").is_dir():
        pytest.skip("the notebook reads the machine's man pages; /usr/share/man/man1 is absent")

    monkeypatch.setenv("LONGDOC_NB_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("LONGDOC_NB_PAGES", "4")
    monkeypatch.setenv("LONGDOC_NB_MAX_LENGTH", "32")
    monkeypatch.setenv("LONGDOC_NB_EPOCHS", "2")
    monkeypatch.setenv("LONGDOC_NB_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("LONGDOC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
    )
    assert "accuracy" in outputs and "IndexCounts" in outputs and "LabelSummary" in outputs
    assert (tmp_path / "work" / "index" / "manifest.json").is_file()
    assert list((tmp_path / "work" / "labels").glob("part-*.parquet"))
