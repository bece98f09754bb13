#!/usr/bin/env sh
# Table 1 on Fashion-MNIST (experiments/table_fashion.toml): the 9 unpruned baselines, then the
# 45 pruned runs, into reports/real/runs_table. Resumable: run it again to continue (finished
# runs are skipped, interrupted ones resume from their last epoch). Then print the table.
#   WORKERS=2 sh reports/real/run_table.sh        (default 2 workers, 1 thread each)
set -eu
cd "$(dirname "$0")/../.."
GFVERIFY="${GFVERIFY:-.venv/bin/gfverify}"
RUNS="${RUNS:-reports/real/runs_table}"
WORKERS="${WORKERS:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export GFVERIFY_NO_PROGRESS=1
CONFIG=experiments/table_fashion.toml
"$GFVERIFY" sweep "$CONFIG" --runs-dir "$RUNS" --workers "$WORKERS" --quiet \
    --set prune.ratio=0.0 'sweep.measure.name=["magnitude"]'
"$GFVERIFY" sweep "$CONFIG" --runs-dir "$RUNS" --workers "$WORKERS" --quiet
"$GFVERIFY" results "$RUNS" --table1
