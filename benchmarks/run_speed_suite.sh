#!/usr/bin/env bash
# The GPU speed suite behind docs/benchmarks.md ("session 4"): one command, results under $1.
#   bash benchmarks/run_speed_suite.sh OUT_DIR [WHEELS_DIR]
# WHEELS_DIR: pyzmq/msgpack/platformdirs wheels for a machine without them (the device tool's).
# Each part has its own time limit, so a slow part cannot take the others' results with it.
set -u
out=${1:?usage: run_speed_suite.sh OUT_DIR [WHEELS_DIR]}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -n "${2:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$2"/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1

# 1. step time: reference vs engine variants, FLOP floor, batching, previews, trajectory checks
timeout 360 python3 -m daemon.bench_speed --configs 512,1024,256 --handles 1,5,68 --masks off,on \
    --impls reference,eager,cudagraph --extra-impls cudagraph-split,cudagraph-split-cl,cudagraph-bf16 \
    --batch-sessions 4,8 --batch-variants cudagraph,cudagraph-split,eager \
    --preview-sizes 256,512 --preview-variants cudagraph,eager \
    --steps 30 --ref-steps 20 --check-steps 30 --time-budget 300 --out "$out/speed" > "$out/speed.log" 2>&1
echo "speed: exit $?"

# 1b. one handle, the daemon's configuration (cudagraph + split) beside the reference, more reference steps:
# the reference is bound by the host CPU and its time varies most (22-50 ms over this project's H100 runs)
timeout 120 python3 -m daemon.bench_speed --configs 512 --handles 1 --masks off,on --impls reference,cudagraph \
    --extra-impls cudagraph-split,cudagraph-split-cudnnbench --steps 40 --ref-steps 40 --check-steps 0 --no-floor \
    --out "$out/speed-1h" > "$out/speed-1h.log" 2>&1
echo "speed 1 handle: exit $?"

# 2. the daemon end to end (512 px random model, CUDA graph): single drags, then 8 at once, batched or not
for batch in on off; do
    sizes=256,512
    [ $batch = off ] && sizes=""
    timeout 100 python3 benchmarks/bench_daemon.py --model random:stylegan2-512 --device cuda --steps 30 \
        --repeat 2 --sizes "$sizes" --encodings raw,jpeg,webp --concurrent 8 --concurrent-steps 60 \
        --daemon-args "--batch-steps $batch" > "$out/daemon-batch-$batch.md" 2>&1
    echo "daemon batch $batch: exit $?"
done

# 3. where a step's GPU time goes (kernels per step, busy share, top kernels)
timeout 120 python3 benchmarks/profile_drag_step.py --device cuda --config 512 --variants cudagraph-split,cudagraph,eager-split \
    --steps 20 --out "$out/profile-512.md" > "$out/profile.log" 2>&1
echo "profile: exit $?"

# 4. torch.compile (inductor, reduce-overhead) on the 512 px forward, last: its compile time is long
timeout 150 python3 -m daemon.bench_speed --configs 512 --handles 5 --masks off --impls cudagraph \
    --extra-impls "" --check-steps 0 --no-floor --inductor-config 512 --out "$out/inductor" \
    > "$out/inductor.log" 2>&1
echo "inductor: exit $?"
