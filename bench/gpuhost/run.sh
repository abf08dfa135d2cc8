#!/bin/bash
# On a GPU host without network: install the archives of pack.sh (next to this checkout's bench/) into a venv
# over the host's Python 3.12, print the machine, then run a command with that venv's python.
# usage: bash bench/gpuhost/run.sh ARCHIVES_DIR python bench/gpuhost_loadgen.py --perf-analyzer PA ...
#   ("python" is replaced by the venv's; perf_analyzer is $SRV/pa/perf_analyzer, SRV=/tmp/tritongen-srv)
# Why a venv: Triton 2.51's Python-backend stub takes sys.path from the first python3 on PATH (not from
# PYTHONPATH), and breaks on numpy 2: the venv's site-packages hold numpy 1.26.4 and the copied packages,
# then the host's own.
set -u
A=$(cd "$1" && pwd); shift
SRC=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-/tmp/tritongen-venv}; export SRV=${SRV:-/tmp/tritongen-srv}
T0=$(date +%s)
echo "== machine"
nproc; lscpu | grep -E "^(Model name|Thread|Core|Socket|NUMA node\(s\))"; free -g | head -2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
uname -r; uptime; python3 -VV
if [ ! -f "$VENV/.ok" ]; then
  BASESP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  python3 -m venv --without-pip "$VENV" || {
    BASEEXE=$(python3 -c 'import sys; print(sys._base_executable)')
    mkdir -p "$VENV/bin" "$VENV/lib/python3.12/site-packages"
    ln -sf "$BASEEXE" "$VENV/bin/python3"; ln -sf python3 "$VENV/bin/python"
    printf 'home = %s\ninclude-system-site-packages = false\nversion = 3.12\n' "$(dirname "$BASEEXE")" > "$VENV/pyvenv.cfg"
  }
  SP=$("$VENV/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  tar -xJf "$A/pkgsite.tar.xz" -C "$SP" || { echo "unpacking pkgsite.tar.xz failed"; exit 1; }
  echo "$SRV/site" > "$SP/zz_tritongen_srv.pth"
  echo "$BASESP" > "$SP/zzz_host_site.pth"
  touch "$VENV/.ok"
fi
if [ ! -f "$SRV/.ok" ]; then
  mkdir -p "$SRV" && tar -xJf "$A/server.tar.xz" -C "$SRV" && touch "$SRV/.ok" || { echo "unpacking server.tar.xz failed"; exit 1; }
fi
PY=$VENV/bin/python3
LIBDIR=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
if [ ! -e "$LIBDIR/libpython3.12.so.1.0" ] && ! ldconfig -p | grep -q 'libpython3.12.so.1.0'; then
  echo "no libpython3.12.so.1.0 on the host: the stub uses the copied one"
  export LD_LIBRARY_PATH=$SRV/libpy${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if ! ldconfig -p | grep -q 'libssl.so.3 '; then  # perf_analyzer links OpenSSL 3; the server's copies serve
  (cd "$SRV/pa" && ln -sf ../site/nvidia_pytriton.libs/libssl-*.so.3 libssl.so.3 \
    && ln -sf ../site/nvidia_pytriton.libs/libcrypto-*.so.3 libcrypto.so.3)
fi
export PATH=$VENV/bin:$PATH PYTHONPATH=$SRC PYTHONUNBUFFERED=1
echo "== installed after $(( $(date +%s) - T0 )) s"
$PY -c 'import numpy, locust, rapidjson, tokenizers, generator.measure.runner; print("numpy", numpy.__version__, "locust", locust.__version__)' || exit 1
CMD=("$@"); [ "${CMD[0]}" = python ] && CMD[0]=$PY
"${CMD[@]}"
echo "== total $(( $(date +%s) - T0 )) s"
