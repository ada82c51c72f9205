#!/usr/bin/env bash
# The commands behind the shipped weights (from the JSON model cards in particlescore/weights/).
# Stage 1 trains the transformer and kernel bank; stage 2 adds the EM mixture candidate (--init-from).
set -euo pipefail
# d = 1
python -m particlescore.training --dim 1 --steps 1500 --max-minutes 30 --threads 1 --seed 0 --batch 8 --n-min 128 --n-max 1024 --warmup 50 --lr 2e-3 --no-progress --out particlescore/weights/discoformer_d1.safetensors
python -m particlescore.training --dim 1 --mixture-components 10 --init-from particlescore/weights/discoformer_d1.safetensors --mixture-bias 8 --steps 1500 --max-minutes 40 --threads 1 --seed 1 --batch 8 --n-min 128 --n-max 2048 --warmup 20 --lr 5e-4 --no-progress --run-dir runs/train_d1_mix --out runs/train_d1_mix/discoformer_d1.safetensors
# d = 2
python -m particlescore.training --dim 2 --steps 4000 --max-minutes 62 --threads 1 --seed 0 --batch 8 --n-min 128 --n-max 1024 --warmup 50 --lr 2e-3 --no-progress --out particlescore/weights/discoformer_d2.safetensors
python -m particlescore.training --dim 2 --mixture-components 10 --init-from particlescore/weights/discoformer_d2.safetensors --mixture-bias 8 --steps 1500 --max-minutes 40 --threads 1 --seed 1 --batch 8 --n-min 128 --n-max 2048 --warmup 20 --lr 5e-4 --no-progress --run-dir runs/train_d2_mix --out runs/train_d2_mix/discoformer_d2.safetensors
# d = 3
python -m particlescore.training --dim 3 --steps 3000 --max-minutes 50 --threads 1 --seed 0 --batch 8 --n-min 128 --n-max 1024 --warmup 50 --lr 2e-3 --no-progress --out particlescore/weights/discoformer_d3.safetensors
python -m particlescore.training --dim 3 --mixture-components 10 --init-from particlescore/weights/discoformer_d3.safetensors --mixture-bias 8 --steps 1500 --max-minutes 60 --threads 1 --seed 1 --batch 8 --n-min 128 --n-max 1024 --warmup 20 --lr 5e-4 --no-progress --run-dir runs/train_d3_mix --out runs/train_d3_mix/discoformer_d3.safetensors
# d = 10
python -m particlescore.training --dim 10 --steps 4000 --max-minutes 0.01 --resume --threads 1 --seed 0 --batch 8 --n-min 128 --n-max 1024 --warmup 50 --lr 2e-3 --no-progress --out particlescore/weights/discoformer_d10.safetensors
python -m particlescore.training --dim 10 --mixture-components 10 --init-from particlescore/weights/discoformer_d10.safetensors --mixture-bias 14 --steps 3000 --max-minutes 40 --threads 1 --seed 1 --batch 8 --n-min 128 --n-max 1024 --warmup 20 --lr 5e-4 --no-progress --run-dir runs/train_d10_mix --out runs/train_d10_mix/discoformer_d10.safetensors --resume
