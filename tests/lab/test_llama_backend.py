"""The neuron role's llama.cpp backend on the lab (no GPU, no CUDA toolkit): the decision in
each case, the clear failures, the unit's device hardening, and the CUDA hosts' sources (an
offline build gets as far as the compiler; nothing is compiled)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import lab, playbook


@pytest.fixture(scope="module")
def backend(fleet, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama-backend")
    playbook("tests/lab/llama_backend.yml", "-e", f"out_dir={out}")
    return json.loads((out / "results.json").read_text())


def test_site_picks_the_cpu_build_on_the_lab_and_hides_devices(fleet):
    lines = re.findall(r'"msg": "llama.cpp backend: (.*)"', fleet.stdout)
    assert len(lines) == 2 and all(line.startswith("cpu (auto; GPU: none;") for line in lines)
    for host in ("neuron1", "neuron2"):
        unit = lab("exec", host, "systemctl", "show", "helexa-neuron", "-pPrivateDevices").stdout
        assert unit.strip() == "PrivateDevices=yes"
        # The wheelhouse's CPU build, installed from the index (no direct_url.json), and no
        # CUDA sources or builds on CPU hosts.
        assert lab("exec", host, "test", "-e", "/opt/helexa/llama-cuda", check=False).returncode


def test_decisions(backend):
    cases = backend["cases"]
    assert cases["auto"]["backend"] == "cpu"
    assert cases["cpu"]["backend"] == "cpu" and cases["cpu"]["probe"]["nvcc"] == ""  # no probing
    # A toolkit without a GPU: auto stays on CPU; forced cuda builds if told the architecture.
    assert cases["auto_toolkit_without_gpu"]["backend"] == "cpu"
    assert cases["auto_toolkit_without_gpu"]["probe"]["nvcc"].endswith("/bin/nvcc")
    assert cases["auto_toolkit_without_gpu"]["probe"]["cublas"].endswith("/libcublas.so")
    assert cases["cuda_with_architecture"]["backend"] == "cuda"


def test_forced_cuda_fails_clearly(backend):
    msg = backend["cases"]["cuda_without_toolkit"]["failed"]
    assert "no CUDA toolkit" in msg and "/usr/local/cuda/bin" in msg
    assert "cortex_neuron_cuda_home" in msg and "cortex_neuron_llama_backend to cpu" in msg
    msg = backend["cases"]["cuda_without_cublas"]["failed"]
    assert "has no cuBLAS (libcublas.so)" in msg and "cuda-toolkit-12-x" in msg
    msg = backend["cases"]["cuda_without_gpu"]["failed"]
    assert "no NVIDIA GPU is visible" in msg and "CMAKE_CUDA_ARCHITECTURES" in msg


def test_unit_keeps_gpus_visible_only_for_the_cuda_build(backend):
    cuda = backend["cases"]["cuda_with_architecture"]["unit"]
    assert "PrivateDevices" not in cuda.replace("no PrivateDevices=", "")
    assert "Environment=LD_LIBRARY_PATH=/tmp/cortex-test-cuda/lib64" in cuda
    assert "Environment=CUDA_CACHE_PATH=" in cuda
    # GPUs through a device allow list only; no W^X rule where the CUDA driver generates code.
    assert "DevicePolicy=closed" in cuda and "DeviceAllow=char-nvidia-uvm rw" in cuda
    assert "MemoryDenyWriteExecute" not in cuda.replace("No MemoryDenyWriteExecute=", "")
    cpu = backend["cases"]["auto"]["unit"]
    assert "PrivateDevices=yes" in cpu and "MemoryDenyWriteExecute=yes" in cpu
    assert "DeviceAllow" not in cpu


def test_cuda_sources_build_offline_up_to_the_compiler(backend):
    names = backend["sources"]
    for prefix in ("llama_cpp_python-", "scikit_build_core-", "cmake-", "ninja-", "pathspec-",
                   "packaging-"):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    assert any(n.endswith(".tar.gz") and n.startswith("llama_cpp_python-") for n in names)
    out = backend["build_output"]
    # pip found every build requirement offline and reached CMake, which wants a compiler.
    assert backend["build_rc"] != 0
    assert "Installing backend dependencies: finished with status 'done'" in out, out[-3000:]
    assert "No matching distribution" not in out
    assert "Configuring CMake" in out and "CMAKE_C_COMPILER" in out, out[-3000:]
