"""What the neuron role needs to pick llama.cpp's backend on a host; prints one JSON object.

Arguments: BACKEND (auto|cpu|cuda) CUDA_HOME VENV.  Reads only: with BACKEND cpu it looks at
nothing but the virtualenv (no GPU probing at all).
"""

import glob
import json
import os
import shutil
import subprocess
import sys

backend, cuda_home, venv = sys.argv[1:4]
out = {"gpu": "", "nvcc": "", "nvcc_real": "", "cuda_lib": "", "cublas": "",
       "nvidia_modprobe": "", "llama_version": "", "llama_direct_url": ""}

if backend != "cpu":
    # An NVIDIA GPU: its device node, or nvidia-smi listing one (which also creates the nodes).
    if os.path.exists("/dev/nvidia0"):
        out["gpu"] = "/dev/nvidia0"
    elif shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, check=False)
            if smi.returncode == 0 and smi.stdout.startswith("GPU "):
                out["gpu"] = smi.stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    # The CUDA toolkit: nvcc under CUDA_HOME, else on PATH.
    for nvcc in (os.path.join(cuda_home, "bin", "nvcc"), shutil.which("nvcc")):
        if nvcc and os.path.isfile(nvcc) and os.access(nvcc, os.X_OK):
            out["nvcc"] = nvcc
            out["nvcc_real"] = os.path.realpath(nvcc)
            root = os.path.dirname(os.path.dirname(out["nvcc_real"]))
            lib = os.path.join(root, "lib64")
            if os.path.isdir(lib) and lib not in ("/usr/lib64", "/lib64"):
                out["cuda_lib"] = lib
            # llama.cpp links cuBLAS: a toolkit of the compiler alone cannot build it.
            for pattern in ("lib64", "lib", "lib/*", "targets/*/lib"):
                found = glob.glob(os.path.join(root, pattern, "libcublas.so"))
                if found:
                    out["cublas"] = found[0]
                    break
            break
    out["nvidia_modprobe"] = shutil.which("nvidia-modprobe") or ""

# Which llama-cpp-python the virtualenv holds, and from where (PEP 610: a wheel installed by
# path records its URL; one from the wheelhouse's index records none).
for info in glob.glob(os.path.join(venv, "lib", "python3*", "site-packages",
                                   "llama_cpp_python-*.dist-info")):
    out["llama_version"] = os.path.basename(info)[len("llama_cpp_python-"):-len(".dist-info")]
    try:
        with open(os.path.join(info, "direct_url.json"), encoding="utf-8") as f:
            out["llama_direct_url"] = json.load(f).get("url", "")
    except (OSError, ValueError):
        pass

print(json.dumps(out))
