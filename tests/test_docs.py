"""The documentation's code samples run as written: README's "Deploy" section and docs/drop_in.md."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python_blocks(path, section=None):
    text = (ROOT / path).read_text()
    if section is not None:
        start = text.index(f"\n## {section}")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end >= 0 else None]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


DEPLOY = _python_blocks("README.md", "Deploy: TorchScript, torch.fx, ONNX")
DROP_IN = _python_blocks("docs/drop_in.md")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("index", range(len(DEPLOY)))
def test_readme_deploy_samples_run(index, tmp_path, monkeypatch):
    for module in ("torchvision", "onnxruntime", "onnx"):
        if module in DEPLOY[index]:
            pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    exec(compile(DEPLOY[index], f"README.md:Deploy[{index}]", "exec"), {"__name__": "readme_sample"})


@pytest.mark.filterwarnings("ignore")
def test_drop_in_samples_run(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "drop_in_sample"}
    for index, block in enumerate(DROP_IN):
        exec(compile(block, f"docs/drop_in.md[{index}]", "exec"), namespace)


def test_samples_were_found():
    assert len(DEPLOY) == 3 and len(DROP_IN) >= 4
