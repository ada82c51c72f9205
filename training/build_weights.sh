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

# d = 2 and 3 default files (elliptical candidate, shape features): stages A, B from the files above
# (d = 2: the GMM-only file, now discoformer_d2_gmm; d = 3: the heavy-tail fine-tune), then C (and D for d = 2).
# Each --init-from particlescore/weights/... names the file that was the default when the stage ran;
# the JSON cards record its sha256 (init_from / finetuned_from).
# d = 2, stage A
python -m particlescore.training --dim 2 --init-from particlescore/weights/discoformer_d2.safetensors --add-elliptical --mixture-bias -4 --families gmm:4 gaussian:1 t_mixture:1 laplace:1 radial:2 --steps 2000 --max-minutes 30 --threads 1 --seed 22 --batch 8 --n-min 128 --n-max 1024 --warmup 20 --lr 3e-4 --run-dir runs/rad_d2 --out runs/rad_d2/discoformer_d2.safetensors --no-prog
# d = 2, stage B
python -m particlescore.training --dim 2 --finetune-from runs/rad_d2/discoformer_d2.safetensors --families gmm:8 gaussian:1 t_mixture:1 laplace:1 radial:2 --steps 1200 --max-minutes 22 --threads 1 --seed 32 --batch 8 --n-min 128 --n-max 4096 --warmup 20 --lr 1e-4 --run-dir runs/radb_d2 --out runs/radb_d2/discoformer_d2.safetensors --no-prog --resume
# d = 2, stage C (stopped at its step-500 checkpoint, saved as runs/shape_d2/discoformer_d2.safetensors)
python -m particlescore.training --dim 2 --init-from particlescore/weights/discoformer_d2.safetensors --add-shape-features --families gmm:6 gaussian:1 t_mixture:1 laplace:1 radial:3 --steps 1600 --max-minutes 55 --threads 1 --seed 42 --batch 8 --n-min 128 --n-max 4096 --warmup 20 --lr 2e-4 --run-dir runs/shape_d2
# d = 2, stage D (--out runs/shaped_d2/...; stage E starts from it)
python -m particlescore.training --dim 2 --finetune-from runs/shape_d2/discoformer_d2.safetensors --log-n-all-points --solver-regime-above 2896 --search-patience 3 --families gmm:6 gaussian:1 t_mixture:1 laplace:1 radial:3 --steps 900 --max-minutes 60 --threads 1 --seed 44 --batch 6 --n-min 128 --n-max 32768 --warmup 20 --lr 1.5e-4 --run-dir runs/shaped_d2 --out runs/shaped_d2/discoformer_d2.safetensors --no-prog
# d = 2, stage E (from stage D, shipped for a while as sha256 6988fa3775bc)
python -m particlescore.training --dim 2 --finetune-from particlescore/weights/discoformer_d2.safetensors --log-n-all-points --solver-regime-above 2896 --search-patience 3 --families gmm:4 gaussian:1 t_mixture:1 laplace:1 radial:4 --steps 500 --max-minutes 38 --threads 1 --seed 45 --batch 6 --n-min 512 --n-max 32768 --warmup 10 --lr 1e-4 --run-dir runs/shapee_d2 --out runs/shapee_d2/discoformer_d2.safetensors --no-prog
# d = 3, stage A
python -m particlescore.training --dim 3 --init-from particlescore/weights/discoformer_d3.safetensors --add-elliptical --mixture-bias -4 --families gmm:4 gaussian:1 t_mixture:1 laplace:1 radial:2 --steps 2000 --max-minutes 30 --threads 1 --seed 23 --batch 8 --n-min 128 --n-max 1024 --warmup 20 --lr 3e-4 --run-dir runs/rad_d3 --out runs/rad_d3/discoformer_d3.safetensors --no-prog
# d = 3, stage B
python -m particlescore.training --dim 3 --finetune-from runs/rad_d3/discoformer_d3.safetensors --families gmm:8 gaussian:1 t_mixture:1 laplace:1 radial:2 --steps 1200 --max-minutes 30 --threads 1 --seed 33 --batch 8 --n-min 128 --n-max 4096 --warmup 20 --lr 1e-4 --run-dir runs/radb_d3 --out runs/radb_d3/discoformer_d3.safetensors --no-prog
# d = 3, stage C
python -m particlescore.training --dim 3 --init-from particlescore/weights/discoformer_d3.safetensors --add-shape-features --families gmm:6 gaussian:1 t_mixture:1 laplace:1 radial:3 --steps 1200 --max-minutes 55 --threads 1 --seed 43 --batch 8 --n-min 128 --n-max 4096 --warmup 20 --lr 2e-4 --run-dir runs/shape_d3 --out runs/shape_d3/discoformer_d3.safetensors --no-prog

# Config edits after training (tensors bitwise unchanged; each card's config_edits records them; the
# file's sha256 also depends on the edit's date, which the card records).
# Tied clustering in the d = 2, 3, 10 and any-d files (model card, "Tied clustering"):
for f in d2 d3 d10; do
  python -m particlescore.training.edit_config particlescore/weights/discoformer_$f.safetensors particlescore/weights/discoformer_$f.safetensors \
    --set mixture_tied=true --set mixture_tied_clustering=true --note "The tied chain of the mixture search also competes for the clustering where a full component has fewer than 128 points per parameter (candidates.fit_mixture, tied_clustering); the leave-one-out covariances then give each component its own covariance. Same weights, flag off -> on, on the score table's held-out mixtures (benchmarks/results/tied_clustering/); model card, section 'Tied clustering'."
done
python -m particlescore.training.edit_config particlescore/weights/discoformer_equivariant.safetensors particlescore/weights/discoformer_equivariant.safetensors \
  --set mixture_tied_clustering=true --note "The tied chain of the mixture search also competes for the clustering where a full component has fewer than 128 points per parameter (candidates.fit_mixture, tied_clustering); the leave-one-out covariances then give each component its own covariance. Same weights, flag off -> on, on the score table's held-out mixtures (benchmarks/results/tied_clustering/); model card, section 'Tied clustering'."
# k-means++ start for the tied chain in the d = 10 and any-d files (model card, "k-means++ start"; in
# d = 2 and 3 it changed nothing beyond the standard error, so they stay as they are):
for f in d10 equivariant; do
  python -m particlescore.training.edit_config particlescore/weights/discoformer_$f.safetensors particlescore/weights/discoformer_$f.safetensors \
    --set mixture_kmeans_start=true --note "The tied chain of the mixture search also runs EM from a k-means++ start at every K and keeps the likelier fit (candidates.fit_mixture, kmeans_start). Same weights, flag off -> on, on the score table's held-out mixtures (benchmarks/results/kmeans_start/); model card, section 'k-means++ start'."
done
# d = 10 fine-tuned with the k-means++ start on (model card, "k-means++ start"; shipped as discoformer_d10):
python -m particlescore.training --dim 10 --finetune-from particlescore/weights/discoformer_d10.safetensors --families gmm:4 t_mixture:1 laplace:1 --steps 400 --max-minutes 30 --threads 1 --seed 49 --batch 8 --n-min 128 --n-max 2048 --warmup 10 --lr 5e-5 --no-progress --run-dir runs/km_d10 --out runs/km_d10/discoformer_d10.safetensors --eval-sizes 256 1024 4096
cp runs/km_d10/discoformer_d10.safetensors runs/km_d10/discoformer_d10.json particlescore/weights/
# Merge test in the d = 10 file (model card, "Merge test"; in d = 2 and 3 it merged real components,
# so they and the any-d file keep it off), then 400 fine-tuning steps with it on (shipped as discoformer_d10):
mkdir -p runs/merge_d10
python -m particlescore.training.edit_config particlescore/weights/discoformer_d10.safetensors runs/merge_d10/discoformer_d10.safetensors \
  --set mixture_merge_test=true --note "Over-split components of the mixture candidate are merged back by G-means' normality test run backwards (candidates.merge_components). Same weights, flag off -> on, on the score table's held-out mixtures (benchmarks/results/merge_test/); model card, section 'Merge test'."
python -m particlescore.training --dim 10 --finetune-from runs/merge_d10/discoformer_d10.safetensors --families gmm:4 t_mixture:1 laplace:1 --steps 400 --max-minutes 40 --threads 1 --seed 51 --batch 8 --n-min 128 --n-max 2048 --warmup 10 --lr 5e-5 --no-progress --run-dir runs/merge_ft --out runs/merge_ft/discoformer_d10.safetensors --eval-sizes 256 1024 4096
cp runs/merge_ft/discoformer_d10.safetensors runs/merge_ft/discoformer_d10.json particlescore/weights/
# Scale-split chain in the any-d file (model card, "Scale splits"; a config edit, tensors unchanged):
python -m particlescore.training.edit_config particlescore/weights/discoformer_equivariant.safetensors particlescore/weights/discoformer_equivariant.safetensors \
  --set mixture_scale_split=true --note "The full-covariance fits also grow a third chain by concentric (scale) splits, Σ/2 and 3Σ/2, competing in BIC where two full components have at least two points per parameter (candidates.fit_mixture, scale_split). Same weights, flag off -> on: score table unchanged within ±0.14 points at d = 2, 3, 5, 10, 16, 32 (benchmarks/results/scale_split/score_switch_equivariant.md); ablation d = 2, 3, 10 average 14.95 -> 14.24 %, d = 5 Student-t 8.97 -> 5.84 %; model card, section 'Scale splits'."
# Birth moves, the likeliest of three k-means++ draws and the small-component prior in the d = 10 file,
# then 400 fine-tuning steps with them on (model card, "Birth moves"; shipped as discoformer_d10):
python -m particlescore.training.edit_config particlescore/weights/discoformer_d10.safetensors runs/birth_d10/discoformer_d10.safetensors \
  --set mixture_birth=true --set mixture_kmeans_restarts=3 --set mixture_loo_small_prior=true --note "Birth moves and the likeliest of three k-means++ draws in the tied chain, and a pooled-scale prior for components of at most d points (candidates.fit_mixture, loo_covariances). Same weights, fields off -> on, score table 11.83 / 4.81 / 2.05 / 0.67 -> 11.53 / 4.57 / 1.76 / 0.67 % (benchmarks/results/birth_moves/); model card, section 'Birth moves'."
python -m particlescore.training --dim 10 --finetune-from runs/birth_d10/discoformer_d10.safetensors --families gmm:4 t_mixture:1 laplace:1 --steps 400 --max-minutes 50 --threads 1 --seed 54 --batch 8 --n-min 128 --n-max 2048 --warmup 10 --lr 5e-5 --no-progress --run-dir runs/birth_ft --out runs/birth_ft/discoformer_d10.safetensors --eval-sizes 256 1024 4096
cp runs/birth_ft/discoformer_d10.safetensors runs/birth_ft/discoformer_d10.json particlescore/weights/
