#!/bin/bash
# GPU cost figures for the README (issue 19). Not part of CI and not installed with the package.
#
#   benchmarks/gpu/run_gpu_bench.sh prepare   # on the CPU machine: wheels + converted, preprocessed PH2 and LA
#   benchmarks/gpu/run_gpu_bench.sh run       # on one GPU machine (the device tool: run "... run" with carry
#                                             # benchmarks/gpu/wheels and benchmarks/gpu/work); results in $OUT
#
# run: seconds per iteration, the ratio to nnUNetTrainer and each trainer's compute floor (`nnunet_ssl
# bench-step`, all trainers in one process), peak GPU memory (torch's, one process per trainer) of nnUNetTrainer and every SSL trainer on PH2 2d and LA 3d_fullres, then a short
# LA 3d_fullres training of nnUNetTrainer vs nnUNetTrainerSGRS, predicted and scored on LA's held-out cases.
# ../shared/gpu-notes.md: which wheels, and that one call carries at most 64 MiB (SimpleITK alone is 53 MB:
# it is left out, PH2 and LA need no ITK reader here: PNG and NIfTI through nibabel).
# Not yet run on a GPU: nothing in the README comes from it until it has.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$HERE/work WHEELS=$HERE/wheels
SHARED=${SHARED:-$HERE/../../../shared/data}
TRAINERS="nnUNetTrainer nnUNetTrainerMeanTeacher nnUNetTrainerSGRS nnUNetTrainerSelfTraining nnUNetTrainerSelfTrainingSGRS"
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results

case "${1:-}" in
prepare)
  grep -qx "benchmarks/gpu/wheels/" "$HERE/../../.git/info/exclude" 2>/dev/null ||
    printf 'benchmarks/gpu/wheels/\nbenchmarks/gpu/work/\n' >> "$HERE/../../.git/info/exclude"
  mkdir -p "$WHEELS"
  for w in blosc2 connected-components-3d nibabel monai ndindex numexpr nnunetv2==2.8.1 batchgenerators \
           batchgeneratorsv2 dynamic-network-architectures acvl-utils yacs graphviz; do
    pip download -q --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 --only-binary=:all: \
      -d "$WHEELS" "$w" || pip download -q --no-deps -d "$WHEELS" "$w"   # acvl-utils: sdist
  done
  nnunet_ssl convert ph2 "$SHARED/PH2" -d 951 --labeled 4
  nnunet_ssl convert la "$SHARED/LA" -d 952 --labeled 4 --skip-missing --test-fraction 0.2
  nnUNetv2_plan_and_preprocess -d 951 -c 2d --verify_dataset_integrity
  nnUNetv2_plan_and_preprocess -d 952 -c 3d_fullres --verify_dataset_integrity
  nnunet_ssl preprocess-unlabeled -d 951 -c 2d
  nnunet_ssl preprocess-unlabeled -d 952 -c 3d_fullres
  rm -rf "$nnUNet_raw"/Dataset95?_*/imagesUnlabeled  # the pools are preprocessed; keep the carry small
  du -sh "$WHEELS" "$WORK"   # together under 64 MiB, or carry them in two calls while the machine is warm
  ;;
run)
  OUT=${OUT:-$WORK/out}; mkdir -p "$OUT"
  pip install -q --no-index --no-deps "$WHEELS"/* && pip install -q --no-deps -e "$HERE/../.."
  export nnUNet_extTrainer=$(nnunet_ssl env | sed -n 's/^export nnUNet_extTrainer=//p')
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
  # shellcheck disable=SC2086
  nnunet_ssl bench-step -d 951 -c 2d -tr $TRAINERS --iters 20 2>&1 | tee "$OUT/bench_ph2_2d.txt"
  # shellcheck disable=SC2086
  nnunet_ssl bench-step -d 952 -c 3d_fullres -tr $TRAINERS --iters 10 2>&1 | tee "$OUT/bench_la_3d.txt"
  for conf in "951 2d" "952 3d_fullres"; do  # peak GPU memory: one process per trainer (bench-step has none)
    for tr in $TRAINERS; do
      python -c "import sys, torch; from nnunet_ssl.evaluation.bench_step import main
main(sys.argv[1:]); print('peak GPU memory GiB', torch.cuda.max_memory_allocated() / 2**30)" \
        -d ${conf% *} -c ${conf#* } -tr "$tr" --iters 3 --blocks 1 2>&1 | tail -1 |
        sed "s/^/$tr ${conf#* } /" | tee -a "$OUT/peak_memory.txt"
    done
  done
  for tr in nnUNetTrainer nnUNetTrainerSGRS; do  # a short training each (the budget: nnunet_ssl train's options)
    nnunet_ssl train 952 3d_fullres all -tr "$tr" --epochs 20 --iters 50 --val-iters 5 > "$OUT/train_$tr.log" 2>&1
    nnUNetv2_predict -i "$nnUNet_raw"/Dataset952_*/imagesTs -o "$OUT/pred_$tr" -d 952 -c 3d_fullres -f all -tr "$tr"
    nnunet_ssl evaluate "$nnUNet_raw"/Dataset952_*/labelsTs "$OUT/pred_$tr" -djfile "$nnUNet_raw"/Dataset952_*/dataset.json -o "$OUT/eval_$tr.json" > "$OUT/eval_$tr.txt" 2>&1
  done
  ;;
*) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
