"""`upload-driver doctor` on a GPU host: the NVIDIA driver and the highest CUDA it supports, read from
nvidia-smi's outputs as recorded on real machines (tests/data/nvidia-smi/), whether each image's CUDA
build runs on that driver, and what to do otherwise. The doctor itself runs against a stand-in
`nvidia-smi` first on PATH that prints a recorded output."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from driver_helpers import drive
from upload_driver import nvidia

RECORDED = Path(__file__).parent / "data" / "nvidia-smi"
ROOT = Path(__file__).resolve().parents[1]


def recorded(case: str) -> tuple[str, str]:
    """(the query's output, plain nvidia-smi's output) of one recorded machine."""
    return (RECORDED / f"{case}.query.txt").read_text(), (RECORDED / f"{case}.txt").read_text()


def fake_nvidia_smi(folder: Path, case: str, code: int = 0, body: str = "") -> Path:
    """An `nvidia-smi` that prints the recorded outputs of ``case``, and refuses any other query than the
    one the doctor is meant to ask."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    query = " ".join(nvidia.QUERY)
    tool.write_text(
        "#!/bin/sh\nPATH=/usr/bin:/bin\n"
        + body
        + f'if [ "$*" = "{query}" ]; then cat "{RECORDED / case}.query.txt"\n'
        + f'elif [ $# -eq 0 ]; then cat "{RECORDED / case}.txt"\n'
        + 'else echo "unexpected arguments: $*"; exit 2; fi\n'
        + f"exit {code}\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.parametrize(
    ("case", "version", "cuda", "gpus"),
    [
        ("rtx3090-wsl2-560", "560.94", "12.6", [("NVIDIA GeForce RTX 3090", "24576 MiB")]),
        ("h100-580", "580.65.06", "13.0", [("NVIDIA H100 80GB HBM3", "81559 MiB")] * 2),
        ("a100-535", "535.183.01", "12.2", [("NVIDIA A100-SXM4-40GB", "40960 MiB")]),
    ],
)
def test_the_driver_and_its_cuda_are_read_from_nvidia_smi(case, version, cuda, gpus):
    driver = nvidia.parse(*recorded(case))
    assert (driver.version, driver.cuda) == (version, cuda)
    assert [(g.name, g.memory) for g in driver.gpus] == gpus


@pytest.mark.parametrize("case", ["no-driver", "empty", "garbled"])
def test_no_driver_version_no_driver(case):
    assert nvidia.parse(*recorded(case)) is None


def test_the_table_header_alone_still_names_the_driver():
    """The query failed (an old nvidia-smi), plain nvidia-smi answered: the driver and CUDA, no GPU list."""
    driver = nvidia.parse("", recorded("a100-535")[1])
    assert (driver.version, driver.cuda, driver.gpus) == ("535.183.01", "12.2", ())


def _verdicts(driver: nvidia.Driver, wsl: bool = False) -> dict[str, nvidia.Verdict]:
    return {v.tool: v for v in nvidia.assess(driver, wsl)}


def test_a_580_driver_runs_both_images():
    found = _verdicts(nvidia.parse(*recorded("h100-580")))
    assert found["merge-tool"].ok is True and found["gguf-tool"].ok is True


def test_a_560_driver_under_wsl2_needs_the_cuda_12_torch_for_merge_tool():
    found = _verdicts(nvidia.parse(*recorded("rtx3090-wsl2-560")), wsl=True)
    merge = found["merge-tool"]
    assert merge.ok is None
    assert merge.detail.startswith("driver 560.94 supports CUDA 12.6: the merge-tool image's torch 2.13.0 (CUDA 13.0)")
    assert "needs driver >= 580" in merge.detail
    assert merge.remedy == (
        "update the driver, or build merge-tool with "
        "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 images/build.sh --cuda merge-tool"
    )
    assert found["gguf-tool"].ok is True  # 560.94 >= 551.78, CUDA 12.4 Update 1 on Windows


def test_a_535_driver_runs_cuda_12_4_with_minor_version_compatibility():
    found = _verdicts(nvidia.parse(*recorded("a100-535")))
    assert found["merge-tool"].ok is None and "TORCH_INDEX_URL=" in found["merge-tool"].remedy
    gguf = found["gguf-tool"]
    assert gguf.ok is None and "minor-version compatibility" in gguf.detail
    assert gguf.remedy == "update the driver to >= 550.54.15 for every CUDA 12.4 feature"


def test_a_driver_older_than_cuda_12_gets_the_cpu_images():
    found = _verdicts(nvidia.Driver("470.256.02", "11.4", ()))
    for tool in ("merge-tool", "gguf-tool"):
        assert found[tool].ok is None and "GPU steps run on the CPU" in found[tool].detail
        assert found[tool].remedy.endswith(f"or use the CPU image (images/build.sh --cpu {tool})")
    assert "TORCH_INDEX_URL" not in found["merge-tool"].remedy  # a CUDA 12 torch would not run either


def test_windows_driver_numbers_under_wsl2():
    """551.61 is past CUDA 12.4.1's Linux driver (550.54.15) but short of its Windows one (551.78)."""
    driver = nvidia.Driver("551.61", "12.4", ())
    assert _verdicts(driver, wsl=False)["gguf-tool"].ok is True
    assert _verdicts(driver, wsl=True)["gguf-tool"].ok is None


def test_the_image_facts_match_images_versions_env():
    """The driver cannot read images/ once installed: its copy of the pins must agree with the file."""
    pins = dict(
        line.split("=", 1) for line in (ROOT / "images" / "versions.env").read_text().splitlines() if "=" in line
    )
    pins = {k: v for k, v in pins.items() if not k.startswith("#")}
    assert pins["CUDA_VERSION"].startswith(nvidia.BASE_CUDA + ".")
    assert pins["TORCH_VERSION"] == nvidia.TORCH_VERSION
    assert pins["TORCH_INDEX_URL"] == ""  # the index's torch, a CUDA 13 build: the row merge-tool gets
    assert {image.cuda for image in nvidia.IMAGES} <= set(nvidia.CUDA_RELEASES)


def _doctor(tmp_path: Path, path: str, **env) -> dict[str, dict]:
    result = drive("doctor", "--json", "--work", tmp_path, env={"PATH": path, "HF_TOKEN": "", **env})
    assert result.exit_code == 0, result.output
    return {f["check"]: f for f in json.loads(result.stdout)}


def test_doctor_on_a_3090_under_wsl2(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "rtx3090-wsl2-560")
    found = _doctor(tmp_path, f"{bin_dir}{os.pathsep}{os.environ['PATH']}", WSL_DISTRO_NAME="Ubuntu-24.04")
    assert found["NVIDIA driver"] == {
        "check": "NVIDIA driver",
        "status": "ok",
        "detail": "560.94, CUDA 12.6 (WSL2): 1x NVIDIA GeForce RTX 3090 (24576 MiB)",
        "remedy": "",
    }
    assert found["CUDA build merge-tool"]["status"] == "warning"
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126" in found["CUDA build merge-tool"]["remedy"]
    assert found["CUDA build gguf-tool"]["status"] == "ok"


def test_doctor_text_on_an_old_driver_says_what_to_do(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "a100-535")
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    result = drive("doctor", "--work", tmp_path, env={"PATH": path, "HF_TOKEN": ""})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index(
        "[warn] CUDA build merge-tool: " + _verdicts(nvidia.parse(*recorded("a100-535")))["merge-tool"].detail
    )
    assert lines[at + 1].strip().startswith("-> update the driver, or build merge-tool with TORCH_INDEX_URL=")


def test_doctor_when_nvidia_smi_cannot_reach_the_driver(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "no-driver", code=9)
    found = _doctor(tmp_path, f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert found["NVIDIA driver"]["status"] == "warning"
    assert "couldn't communicate with the NVIDIA driver" in found["NVIDIA driver"]["detail"]
    assert not any(check.startswith("CUDA build") for check in found)


@pytest.mark.skipif((nvidia.WSL_LIB / "nvidia-smi").exists(), reason="this machine has WSL2's nvidia-smi")
def test_doctor_without_nvidia_smi_is_not_a_failure(tmp_path):
    (tmp_path / "empty").mkdir()
    found = _doctor(tmp_path, str(tmp_path / "empty"))
    assert found["NVIDIA driver"]["status"] == "warning"
    assert found["NVIDIA driver"]["detail"].startswith("no nvidia-smi here")


def test_nvidia_smi_found_where_wsl2_puts_it(tmp_path, monkeypatch):
    wsl_lib = fake_nvidia_smi(tmp_path / "wsl" / "lib", "rtx3090-wsl2-560")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    found = nvidia.probe(wsl_lib)
    assert found.tool == str(wsl_lib / "nvidia-smi")
    assert nvidia.parse(found.query, found.table).version == "560.94"


def test_a_hanging_nvidia_smi_is_given_up_on(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", "h100-580", body="exec sleep 30\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(nvidia, "CALL_SECONDS", 0.5)
    found = nvidia.probe(tmp_path / "no-wsl")
    assert (found.query, found.table, found.said) == ("", "", "no answer within 0.5 s")
