#!/bin/bash
# Here (a machine with a package index): the archives a GPU host without network needs to run
# bench/gpuhost_loadgen.py. Usage: bash bench/gpuhost/pack.sh OUT_DIR   (about 50 MB; takes minutes)
#   OUT/server.tar.xz   tritonserver 2.51 from nvidia-pytriton 0.7.0 (binary, Python backend, the 3.12 stub,
#                       its libraries), tritonclient 2.51.0's Python package and perf_analyzer
#   OUT/pkgsite.tar.xz  cp312 packages the load generator imports, numpy 1.26.4 among them (Triton 2.51's
#                       stub breaks on numpy 2)
#   OUT/src.tar         this checkout (git archive HEAD)
# LIBPY: the folder of a libpython3.12.so.1.0 to take along (default: python3.12's, else pyenv's 3.12.1).
set -euo pipefail
export XZ_OPT=${XZ_OPT:--2 -T0}  # xz -2: nearly the size of the default level at a third of its CPU
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")/../.." && pwd)
PIP=${PIP:-$HERE/.venv/bin/pip}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
PLAT=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
      --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_12_x86_64
      --platform manylinux2010_x86_64 --platform any)
"$PIP" download -q --dest "$W/wheels" --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none "${PLAT[@]}" locust==2.47.0 hpack==4.2.0 pydantic python-rapidjson \
  numpy==1.26.4 psutil tokenizers pyyaml jinja2 protobuf grpcio msgpack typing_extensions prometheus_client
"$PIP" download -q --no-deps --dest "$W/server" --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_35_x86_64 --platform manylinux1_x86_64 nvidia-pytriton==0.7.0 tritonclient==2.51.0
if [ ! -f "$OUT/pkgsite.tar.xz" ]; then  # each archive made once: delete it to make it again
mkdir -p "$W/site"
for whl in "$W"/wheels/*.whl; do
  case "$(basename "$whl")" in  # what tokenizers and locust pull in but never import here
    hf_xet-*|huggingface_hub-*|fsspec-*|tqdm-*|pytest-*|pluggy-*|iniconfig-*|pygments-*) continue;; esac
  unzip -q -o "$whl" -d "$W/site"
done
# Some wheels ship their extension modules with debug info (python-rapidjson's: 7 MB of 7.6).
find "$W/site" -name '*.cpython-312-*.so' -o -name '*.abi3.so' | while read -r so; do
  file "$so" | grep -q "not stripped" && strip --strip-unneeded "$so"
done
tar -cJf "$OUT/pkgsite.tar.xz" -C "$W/site" .
fi
if [ ! -f "$OUT/server.tar.xz" ]; then
mkdir -p "$W/srv/site" "$W/srv/pa"
unzip -q "$W"/server/nvidia_pytriton-*.whl 'pytriton/tritonserver/bin/*' 'pytriton/tritonserver/backends/*' \
  'pytriton/tritonserver/caches/*' 'pytriton/tritonserver/python_backend_stubs/3.12/*' 'nvidia_pytriton.libs/*' \
  -x 'nvidia_pytriton.libs/libpython3-*' -d "$W/srv/site"  # (the 3.13 stub's libpython: not needed)
# A host Python without a shared libpython (some builds link it statically) leaves the 3.12 stub without
# one: a stripped libpython3.12 goes along (setup.sh uses it only then).
mkdir -p "$W/srv/libpy"
LIBPY=${LIBPY:-$(python3.12 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))' 2>/dev/null \
  || echo "$HOME/.pyenv/versions/3.12.1/lib")}/libpython3.12.so.1.0
strip -o "$W/srv/libpy/libpython3.12.so.1.0" "$LIBPY"
unzip -q "$W"/server/tritonclient-*.whl 'tritonclient-2.51.0.data/*' -d "$W/tc"
mv "$W/tc/tritonclient-2.51.0.data/purelib/tritonclient" "$W/srv/site/"
mv "$W/tc/tritonclient-2.51.0.data/data/bin/perf_analyzer" "$W/srv/pa/"
(cd "$W/srv/pa" && ln -s ../site/nvidia_pytriton.libs/libb64-*.so.0d libb64.so.0d \
  && ln -s ../site/nvidia_pytriton.libs/libcudart-*.so.12* libcudart.so.12)
# The server's binaries carry their symbol tables (a third of their size); their dynamic symbols stay.
for f in site/pytriton/tritonserver/bin/tritonserver site/nvidia_pytriton.libs/libtritonserver-*.so pa/perf_analyzer \
         site/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub \
         site/pytriton/tritonserver/backends/python/libtriton_python.so; do
  strip --strip-unneeded "$W/srv/"$f
done
tar -cJf "$OUT/server.tar.xz" -C "$W/srv" .
fi
git -C "$HERE" archive -o "$OUT/src.tar" HEAD
ls -la "$OUT"
