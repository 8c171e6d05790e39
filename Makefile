# deepcf: `make train` and `make test` work on a fresh clone (each installs what it needs).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deepcf-installed
# the CPU build of torch, installed first: a ranged torch would pull a multi-GB CUDA build
TORCH  ?= torch==2.13.0

.PHONY: install train test test-full experiments lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# the study's best experiment on the real MovieLens-100K
train: install
	$(PY) -m deepcf.train experiment=scheduler_lr

test: install
	$(PY) -m pytest -q

# everything, the slow checks too
test-full: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(PY) -m ruff check deepcf tests

clean:
	rm -rf outputs .pytest_cache

# the newest run dir with a model.onnx (any task), or RUN=outputs/<task>/runs/<timestamp>
RUN     ?= $(shell ls -t outputs/*/runs/*/model.onnx 2>/dev/null | head -1 | xargs -r dirname)
USER_ID ?= 196
.PHONY: evaluate recommend

# held-out RMSE/MAE and ranking metrics of the newest trained model on its own test split
evaluate: install
	@test -n "$(RUN)" || { echo "make evaluate: no model.onnx under outputs/; run make train first" >&2; exit 2; }
	$(PY) -m deepcf.evaluate $(RUN)

# top-10 unseen movies with titles for one user of the newest trained model's data
recommend: install
	@test -n "$(RUN)" || { echo "make recommend: no model.onnx under outputs/; run make train first" >&2; exit 2; }
	$(PY) -m deepcf.recommend $(RUN) --user $(USER_ID) -n 10

# the study's five experiments and the beyond ones, 3 seeds each, next to the baselines;
# rewrites the table in docs/experiments.md and draws the runs (curves.png, test_metrics.png,
# report.md) into outputs/experiments/report
experiments: install
	rm -rf outputs/experiments
	$(PY) -m deepcf.study.experiments --seeds 1 2 3 --update-readme docs/experiments.md
	$(PY) -m deepcf.report outputs/experiments --out outputs/experiments/report

# deepcf's sparse training next to the dense masked formulation, Movies-Dataset scale (26M
# ratings) and ML-100K, then ONNX scoring, then the multinomial loss (Mult-DAE) at 26M ratings,
# then the HTTP service's latency and users/s on loopback; rewrites BENCHMARKS.md (~4 min on 2
# cores, ~6 more for the multinomial row, ~6 for serving; not `make test`)
# whole runs of the recommended models on a Movies-Dataset-sized ratings.csv (FULL_CSV; written
# once from the synthetic movies_full if missing): train to early stopping, export, evaluate,
# recommend, each timed with its peak RSS; rewrites BENCHMARKS-full.md (~20 min on 2 cores)
FULL_CSV ?= $(HOME)/.cache/deepcf/movies_full.csv
.PHONY: bench-full
bench-full: install
	test -f $(FULL_CSV) || $(PY) -c "import sys; from deepcf.data.synthetic import SCALES, generate_ratings, write_csv; write_csv(generate_ratings(**SCALES['movies_full']), sys.argv[1])" $(FULL_CSV)
	$(PY) -m deepcf.bench.full --csv $(FULL_CSV) --out BENCHMARKS-full.md

.PHONY: bench readme
bench: install
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 $(PY) -m deepcf.bench --out BENCHMARKS.md
	$(PY) -m deepcf.bench.scoring --threads 2 --out outputs/bench_scoring.md
	printf '\n## Scoring: onnxruntime vs PyTorch eager\n\n' >> BENCHMARKS.md
	cat outputs/bench_scoring.md >> BENCHMARKS.md
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 $(PY) -m deepcf.bench.multinomial --scale movies_full --batches 10 --out outputs/bench_multinomial.md
	printf '\n' >> BENCHMARKS.md
	cat outputs/bench_multinomial.md >> BENCHMARKS.md
	$(PY) -m deepcf.bench.serving --out outputs/bench_serving.md
	printf '\n## Serving over HTTP: latency and users/s\n\n' >> BENCHMARKS.md
	cat outputs/bench_serving.md >> BENCHMARKS.md

# re-run every <!-- transcript: ... --> block of README.md and docs/*.md: every measured number
# in them is one a command printed; MATCH=TEXT re-runs only the blocks whose command contains TEXT.
# The order matters: README.md's make train first, then docs/serving.md (make evaluate and make
# recommend read the newest run dir under outputs/), then the other pages (docs/full-scale.md
# trains a newer run of its own)
TRANSCRIPTS := README.md docs/serving.md $(filter-out docs/serving.md,$(sort $(wildcard docs/*.md)))
readme: install
	$(PY) -m deepcf.study.transcripts $(TRANSCRIPTS) $(if $(MATCH),--match '$(MATCH)')

# every registered row (baselines, the peers of deepcf[peers], deepcf's contenders, ensembles)
# on the rating and top-N protocols of ML-100K, split seeds 0, 1, 2; rewrites ACCURACY.md (under
# an hour on 2 cores)
.PHONY: accuracy accuracy-quick peers
PEERS_STAMP := $(VENV)/.deepcf-peers-installed

# the optional extra deepcf[peers]: Surprise and implicit, the libraries of the peer rows
peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,peers]'
	touch $(PEERS_STAMP)

accuracy: install peers
	$(PY) -m deepcf.study.accuracy --out ACCURACY.md

# the same on split seed 0 only, written under outputs/ (development)
accuracy-quick: install peers
	mkdir -p outputs
	$(PY) -m deepcf.study.accuracy --quick --out outputs/ACCURACY-quick.md

# the rating and top-N protocols at the Movies-Dataset scale: synthetic movies_full (the taste
# generator), one split, the bias / ALS MF / popularity / EASE baselines and any row of
# deepcf.study.rows.SCALE_ROWS, each with its wall time and peak RSS; rewrites only the
# at-scale section of ACCURACY.md. Also the generator's calibration figures (docs/data.md)
.PHONY: accuracy-scale calibrate
accuracy-scale: install
	$(PY) -m deepcf.study.accuracy --scale --out ACCURACY.md

calibrate: install
	$(PY) -m deepcf.study.calibrate
