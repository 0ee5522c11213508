# Sourced by the GPU scripts: burn-cuda and cudarc open NVRTC and NCCL at run time by
# unversioned name, so link the toolkit's, or pip's wheels' (nvidia-cuda-nvrtc,
# nvidia-nccl-cu*), as libnvrtc.so and libnccl.so under $1 and put that first on the library
# path. The driver's libcuda.so.1 is found where the system keeps it; a toolkit's compat/ copy
# would not match the driver.
cuda_libs() {
    local libs=$1 wheels found name
    mkdir -p "$libs"
    wheels=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
    for name in libnvrtc.so libnccl.so; do
        found=$(find /usr/local/cuda*/ /usr/local/nvidia /usr/lib/x86_64-linux-gnu /opt $wheels \
            -name "$name*" \( -type f -o -type l \) 2>/dev/null | grep -v -e stub -e alt -e builtins | sort | head -1)
        [ -n "$found" ] && ln -sf "$found" "$libs/$name" && echo "using $found for $name"
    done
    export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
}
