"""The top-level API: `import flowergan` stays cheap, load_generator takes a run dir, a checkpoint or an export
folder (the same G), the uint8 mapping is the eval package's, and the notebook example of docs/training.md runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_run import tiny_run
from PIL import Image

import flowergan

README = Path(__file__).resolve().parents[1] / "docs" / "training.md"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("api") / "run")


def test_import_flowergan_does_not_import_torch():
    code = "import sys, flowergan; print(flowergan.__version__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == [flowergan.__version__, "False"]
    assert {"generate", "load_generator"} <= set(flowergan.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flowergan.nope  # noqa: B018


def test_load_generator_takes_a_run_a_checkpoint_or_an_export(run, tmp_path):
    from flowergan.artifacts.checkpoint import resolve_checkpoint
    from flowergan.export import export

    folder = export(run, tmp_path / "g")
    want = flowergan.generate(flowergan.load_generator(run), 8, seed=1)
    for path in (resolve_checkpoint(run), folder, str(folder)):
        G = flowergan.load_generator(path)
        assert not G.training
        assert torch.equal(flowergan.generate(G, 8, seed=1), want), path


def test_uint8_mapping_is_the_eval_packages():
    from flowergan_eval.features import to_uint8 as eval_to_uint8

    from flowergan.visuals import to_uint8

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    x[0, 0, 0, :5] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255, -1 / 255])
    assert torch.equal(to_uint8(x), eval_to_uint8(x))
    # round((x + 1) * 127.5), clamped: +-1 -> 255 / 0, 0 -> 128 (127.5 rounds up)
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]


def readme_example() -> str:
    section = README.read_text().split("## Using a trained generator", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section has one Python example, the one this test runs"
    return blocks[0]


def test_readme_notebook_example_runs(run, tmp_path, monkeypatch, capsys):
    code = readme_example()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "flowers64").symlink_to(run)
    assert '"runs/flowers64"' in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip() == "torch.Size([16, 3, 64, 64]) torch.uint8"
    assert Image.open(tmp_path / "flowers.png").size == (4 * 66 + 2, 4 * 66 + 2)


def test_sample_grid_png_holds_the_uint8_pixels_of_to_uint8(tmp_path):
    """save_png (torchvision's save_image) stores exactly the pixels visuals.to_uint8 gives for the same images."""
    import numpy as np
    from PIL import Image

    from flowergan import visuals

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    visuals.save_png(visuals.to_grid(x, nrow=4), tmp_path / "g.png")
    png = np.asarray(Image.open(tmp_path / "g.png"))
    ours = visuals.to_uint8(x).permute(0, 2, 3, 1).numpy()
    for i in range(4):  # make_grid pads 2 px around and between the images
        assert (png[2:10, 2 + 10 * i:10 + 10 * i] == ours[i]).all()
