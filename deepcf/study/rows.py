"""The rows of `make accuracy`, as declarations: a name, a protocol, a fit function
(deepcf.study.fits), the grid tried on the validation carve, the untuned defaults, and a note
saying what the row is. Importing this module registers them (deepcf.study.selection.ROWS);
the baselines come first, then deepcf's contenders, then the ensembles.
"""

from __future__ import annotations

from deepcf.study import fits, peers
from deepcf.study.parity import UserRun
from deepcf.study.selection import COVERAGE_TARGET, Row, register

SURPRISE_BIAS = {"reg_u": 15.0, "reg_i": 10.0}

MF_DEFAULTS = {"rank": 50, "reg": 15.0, "reg_bias": 5.0, "sweeps": 15}

register(Row("global mean", "rating", fits.global_mean, fallback=False,
             note="every rating predicted as the training mean (cold ones too)"))

register(Row("user+item bias", "rating", fits.bias,
             grid=[{"reg_u": r, "reg_i": r} for r in (2.0, 5.0, 10.0)] + [SURPRISE_BIAS],
             defaults=SURPRISE_BIAS,
             note="mu + b_u + b_i by regularised ALS, 10 sweeps (Surprise BaselineOnly; its "
                  "defaults reg_u=15, reg_i=10 are in the grid and are the untuned defaults)"))

register(Row("biased MF (ALS)", "rating", fits.mf,
             grid=[{**MF_DEFAULTS, "rank": k, "reg": r} for k in (20, 50) for r in (10.0, 15.0,
                                                                                  20.0)],
             defaults=MF_DEFAULTS,
             note="mu + b_u + b_i + p_u.q_i by alternating least squares, 15 sweeps, seeded "
                  "(deepcf.study.baselines.fit_mf)"))

register(Row("popularity", "topn", fits.popularity,
             note="movies by training interaction count (ties by movie order)"))

register(Row("EASE", "topn", fits.ease, grid=[{"lam": v} for v in (100.0, 200.0, 400.0, 800.0)],
             defaults={"lam": 400.0},
             note="closed form (Steck 2019) on the binary interactions"))

register(Row("biased MF, ranked by predicted rating", "topn", fits.mf_rank, grid=[MF_DEFAULTS],
             note="the rating row's model fitted on the training ratings, movies ranked by "
                  "predicted rating; fixed at the rating row's defaults"))

POP_RULE = ("selection: the highest carve NDCG@10 among the settings whose carve coverage@10 "
            "is at least that of the EASE row's choice on the same split (the coverage floor of "
            "the ranking targets)")

register(Row("ItemKNN (cosine)", "topn", fits.itemknn, grid=fits.grid(k=[20, 50, 100, 200]),
             defaults={"k": 100},
             note="item-based kNN: cosine similarity of the movies' binary interaction columns, "
                  "each movie's k most similar movies as its neighbourhood, scores summed over "
                  "the user's movies (deepcf.study.baselines.fit_itemknn)"))

register(Row("EASE + popularity correction", "topn", fits.popularity_corrected(fits.ease),
             grid=fits.grid(lam=[100.0, 300.0, 800.0], pop_beta=[0.2, 0.3, 0.4]),
             defaults={"lam": 300.0, "pop_beta": 0.3}, min_coverage=COVERAGE_TARGET,
             note="the EASE row's scores divided by popularity^pop_beta (popularity: training "
                  "interactions of the movie); " + POP_RULE))

# the peers: well-kept libraries fitted on the same splits (deepcf.study.peers; the extra
# deepcf[peers]); each label names the library and the version installed at run time
SURPRISE_LIB, IMPLICIT_LIB = peers.library(peers.SURPRISE), peers.library(peers.IMPLICIT)
SURPRISE_NOTE = (f"{SURPRISE_LIB} (Surprise), fitted on the training ratings, its own "
                 "estimate per test rating (unclipped; the protocol clips); ")

register(Row(f"SVD ({SURPRISE_LIB})", "rating", peers.surprise_fit("svd"),
             grid=fits.grid(n_factors=[100, 50], reg_all=[0.02, 0.05]),
             defaults={"n_factors": 100, "reg_all": 0.02},
             note=SURPRISE_NOTE + "surprise.SVD (biased MF by SGD, Funk/Koren), 20 epochs, "
                  "lr_all 0.005, seeded by the split seed; its documented defaults "
                  "(n_factors=100, reg_all=0.02) are in the grid and are the untuned defaults"))

register(Row(f"SVD++ ({SURPRISE_LIB})", "rating", peers.surprise_fit("svdpp"),
             grid=fits.grid(n_factors=[20], reg_all=[0.02, 0.05]),
             defaults={"n_factors": 20, "reg_all": 0.02},
             note=SURPRISE_NOTE + "surprise.SVDpp (Koren 2008: SVD with the implicit feedback "
                  "of which movies a user rated), 20 epochs, lr_all 0.007, seeded; its "
                  "documented defaults (n_factors=20, reg_all=0.02) are in the grid and are "
                  "the untuned defaults"))

register(Row(f"KNNBaseline ({SURPRISE_LIB})", "rating", peers.surprise_fit("knn_baseline"),
             grid=fits.grid(k=[40, 20], user_based=[False, True]),
             defaults={"k": 40, "user_based": False},
             note=SURPRISE_NOTE + "surprise.KNNBaseline (Koren 2010: kNN on the residuals of "
                  "the ALS baseline), pearson_baseline similarity (the one Surprise's docs "
                  "advise for it), k neighbours (default 40) among users or movies"))

register(Row(f"ALS ({IMPLICIT_LIB})", "topn", peers.implicit_fit("als"),
             grid=fits.grid(factors=[64, 128], regularization=[1.0, 10.0, 30.0, 100.0],
                            alpha=[1.0, 10.0]),
             defaults={"factors": 100, "regularization": 0.01, "alpha": 1.0},
             note=f"{IMPLICIT_LIB}: implicit.als.AlternatingLeastSquares (Hu, Koren & "
                  "Volinsky 2008) on the binary interactions, confidence 1 + alpha, 15 "
                  "iterations, CPU, seeded; scores = user factors . movie factors; untuned "
                  "defaults: implicit's documented ones"))

register(Row(f"BPR ({IMPLICIT_LIB})", "topn", peers.implicit_fit("bpr"),
             grid=fits.grid(factors=[64, 128], learning_rate=[0.005, 0.01],
                            regularization=[0.01, 0.05]),
             defaults={"factors": 100, "learning_rate": 0.01, "regularization": 0.01},
             note=f"{IMPLICIT_LIB}: implicit.bpr.BayesianPersonalizedRanking (Rendle et al. "
                  "2009) on the binary interactions, 100 iterations of SGD on sampled "
                  "(user, movie, unseen movie) triples, CPU, seeded; scores = user factors . "
                  "movie factors (with the item bias); untuned defaults: implicit's documented "
                  "ones. The grid's learning rates: on split 0's carve 0.05 and 0.1 (300 "
                  "iterations) scored NDCG@10 0.12, 0.002 and 0.001 0.15 and 0.14, against 0.21 "
                  "at 0.005"))

I_AUTOREC = ["experiment=i_autorec"]

L2_GRID = [{"model.l2": v} for v in (100.0, 200.0, 300.0)]

register(Row("I-AutoRec (published: L2 on weights, full-batch Rprop)", "rating",
             fits.contender(I_AUTOREC), grid=L2_GRID, defaults={"model.l2": 100.0},
             kind="contender", select_epochs=True,
             note="`experiment=i_autorec`: rows are movies, 500 sigmoid units, identity output, "
                  "lambda/2 ||W||^2 on weights only, full-batch Rprop, early stopping on the "
                  "carve, refit on the 80% for the chosen epochs"))

I_AUTOREC_TARGET = register(Row("I-AutoRec + residual target", "rating",
             fits.contender([*I_AUTOREC, "model.net.residual=target"]), grid=L2_GRID,
             defaults={"model.l2": 100.0}, kind="contender", select_epochs=True,
             note="`experiment=i_autorec model.net.residual=target`: the same net fed the raw "
                  "ratings, its output added to mu + b_user + b_movie (biases fitted on the "
                  "training rows, the row's own bias from the row): the net learns only what "
                  "the biases miss, and still sees which movies were rated"))

register(Row("I-AutoRec + bias residual", "rating",
             fits.contender([*I_AUTOREC, "model.net.residual=bias"]),
             grid=[{"model.l2": 50.0}], kind="contender", select_epochs=True,
             note="`experiment=i_autorec model.net.residual=bias`: the same net fed and predicting "
                  "the residual of mu + b_user + b_movie; lambda 50: the best of 30/50/100/300 "
                  "in a sweep on split 0's carve (the summed objective's lambda)"))

register(Row("U-AutoRec + bias residual", "rating",
             fits.contender([*I_AUTOREC, "data.orientation=user", "model.net.residual=bias"]),
             grid=[{"model.l2": 50.0}], kind="contender", select_epochs=True,
             note="`experiment=i_autorec data.orientation=user model.net.residual=bias`: rows are "
                  "users, otherwise as the I-AutoRec rows"))

U_AUTOREC_ADAM = [*I_AUTOREC, "data.orientation=user", "optimizer=adam",
                  "model.optimizer.lr=0.001", "data.batch_size=128", "trainer.max_epochs=100",
                  "callbacks.early_stopping.patience=10"]

register(Row("U-AutoRec + dense re-feeding", "rating",
             fits.contender([*U_AUTOREC_ADAM, "objective=refeed"]), grid=[{"model.l2": 100.0}],
             # untuned elsewhere at most 20 epochs: a refeed step on 9K-movie rows is dense
             defaults={"model.l2": 100.0, "trainer.max_epochs": 20},
             kind="contender", select_epochs=True,
             note="`experiment=i_autorec data.orientation=user optimizer=adam "
                  "model.optimizer.lr=0.001 data.batch_size=128 objective=refeed`: rows are "
                  "users, batches of 128 with Adam, and after each masked step a second step "
                  "feeding the dense output y = f(x) back with target y (DeepRecommender); "
                  "early stopping on the carve (patience 10, up to 100 epochs; up to 20 in the "
                  "untuned defaults, where the dense refeed step over 9K movies is costly)"))

KERNEL = ["experiment=glocal_k", "model.net.hidden=[500]"]

register(Row("I-AutoRec with GLocal-K's local kernel", "rating", fits.contender(KERNEL),
             grid=[{"model.l2": v} for v in (100.0, 200.0)], defaults={"model.l2": 100.0},
             kind="contender", select_epochs=True,
             note="`experiment=glocal_k model.net.hidden=[500]`: rows are movies, n -> 500 sigmoid "
                  "-> n, every weight W * max(0, 1 - ||u_i - v_o||^2) with learned 5-d vectors "
                  "(GLocal-K's local kernel), L2 on W, kernel sparsity penalty 0.012, "
                  "full-batch Rprop, early stopping on the carve. One hidden layer: GLocal-K's "
                  "two (the experiment's default) scored 0.899 on split 0's carve and ran to "
                  "its 300-epoch cap; its global-kernel stage is the next row"))

register(Row("GLocal-K: local kernel + global-kernel fine-tuning", "rating",
             fits.glocal_k(KERNEL), grid=[{"model.l2": v} for v in (100.0, 200.0)],
             defaults={"model.l2": 100.0}, kind="contender", select_epochs=True,
             note="the previous row's net, then GLocal-K's second stage (deepcf/study/glocal.py): "
                  "its clipped predictions of the whole training matrix give the 3 x 3 global "
                  "kernel delta + mean_users(x_local) @ C, the net's input becomes "
                  "ReLU(conv2d(R, kernel)), and net and C are fine-tuned on the same objective "
                  "by full-batch Rprop from a first step of 1e-5, early-stopped on the carve "
                  "(patience 10); the refit replays both stages' epoch counts. A study stage: "
                  "the convolution needs the whole dense matrix, so deepcf.train does not train "
                  "it"))

MULT_VAE = ["experiment=mult_vae"]

register(Row("blend: I-AutoRec + residual target, kernelised I-AutoRec, biased MF", "rating",
             fits.blend({"target": (fits.contender([*I_AUTOREC, "model.net.residual=target"]),
                               {"model.l2": 200.0}),
                    "kernel": (fits.contender(KERNEL), {"model.l2": 100.0}),
                    "mf": (fits.mf, MF_DEFAULTS)}),
             kind="ensemble", select_epochs=True,
             note="an ensemble, never counted as a single model: the I-AutoRec + residual "
                  "target net (lambda 200), the kernelised I-AutoRec (lambda 100) and the "
                  "biased MF row's model at its defaults, blended by least squares on the "
                  "validation carve (w0 + sum of w_m * member m); the refit keeps the carve's "
                  "weights and epochs"))

EDLAE_NOTE = ("`experiment=edlae`: deepcf's closed-form linear autoencoder (Steck 2020) on the "
              "binary interactions, Lambda = p/(1-p) diag(G) + lam I")

register(Row("EDLAE", "topn", fits.edlae,
             grid=fits.grid(dropout=[0.33, 0.5, 0.7, 0.85], lam=[100.0, 300.0]),
             defaults={"dropout": 0.7, "lam": 100.0}, kind="contender",
             note=EDLAE_NOTE + ", zero diagonal (dropout 0 is EASE)"))

register(Row("EDLAE + popularity correction", "topn", fits.edlae,
             grid=fits.grid(dropout=[0.5, 0.7, 0.85], lam=[50.0, 100.0, 200.0],
                        pop_beta=[0.2, 0.25, 0.3]),
             defaults={"dropout": 0.7, "lam": 100.0, "pop_beta": 0.25}, kind="contender",
             min_coverage=COVERAGE_TARGET,
             note=EDLAE_NOTE + ", zero diagonal; `model.net.pop_beta`: scores / "
                  "popularity^pop_beta inside the net (and its ONNX graph); " + POP_RULE))

EDLAE_SHIPPED = register(Row(
             "EDLAE, experiment=edlae as shipped (auto: chosen on the carve)", "topn",
             fits.edlae_shipped, kind="contender", select_epochs=True,
             note="`python -m deepcf.train experiment=edlae`'s settings, read from "
                  "conf/experiment/edlae.yaml: lam=auto, dropout=auto, emphasis=auto, "
                  "pop_beta=auto, chosen by the net on the carve (deepcf.training.objectives."
                  "closed_form: lam as multiples of mean diag(G), every (lam, dropout, EDLAE or "
                  "DLAE) of the net's grids, then pop_beta at that B against the carve "
                  "coverage@10 of the best dropout-0 EDLAE setting, EASE's: "
                  "coverage_floor=ease), refitted on the training part at the chosen values"))

register(Row("DLAE", "topn", fits.edlae,
             grid=fits.grid(dropout=[0.33, 0.5, 0.7], lam=[100.0, 300.0, 800.0],
                        emphasis=[False]),
             defaults={"dropout": 0.5, "lam": 300.0, "emphasis": False}, kind="contender",
             note=EDLAE_NOTE + ", no diagonal constraint (`model.net.emphasis=false`): B = "
                  "(G + Lambda)^-1 G"))

register(Row("DLAE + popularity correction", "topn", fits.edlae,
             grid=fits.grid(dropout=[0.33, 0.5], lam=[100.0, 300.0], pop_beta=[0.1, 0.2, 0.3],
                        emphasis=[False]),
             defaults={"dropout": 0.5, "lam": 100.0, "pop_beta": 0.2, "emphasis": False},
             kind="contender", min_coverage=COVERAGE_TARGET,
             note=EDLAE_NOTE + ", no diagonal constraint, scores / popularity^pop_beta; "
                  + POP_RULE))

register(Row("Mult-DAE", "topn", fits.ranker(fits.MULT_DAE), kind="contender", select_epochs=True,
             note="`experiment=mult_dae`: rows are users, every rating an interaction, "
                  "L2-normalised input, input dropout 0.5, tanh 600-200-600, the multinomial "
                  "log-likelihood over all movies, Adam 1e-3, batch 128; early stopping on the "
                  "carve's NDCG@10 (patience 20), refit on the training part for the chosen "
                  "epochs. Batch 64/128 and latent 100/200 were tried on split 0's carve: batch "
                  "128 was better (0.259 vs 0.251); latent 100 had the higher carve NDCG (0.266) "
                  "at a lower carve coverage@10 (0.347 vs 0.370): Liang's 200 kept"))

register(Row("Mult-VAE", "topn",
             fits.ranker([*MULT_VAE, "callbacks.early_stopping.patience=10"]), kind="contender",
             select_epochs=True,
             note="`experiment=mult_vae callbacks.early_stopping.patience=10`: Mult-DAE's shape "
                  "with the Gaussian code (mean at inference), KL annealed to beta 0.2 over 200 "
                  "steps (~25 epochs); otherwise as the Mult-DAE row, with early stopping "
                  "patience 10 (not 20) to keep `make accuracy` short"))

register(Row("RecVAE", "topn", fits.ranker(fits.RECVAE), kind="contender", select_epochs=True,
             note="`experiment=recvae`: RecVAE (Shenbin et al. WSDM 2020): rows are users, "
                  "every rating an interaction, a five-layer dense-skip swish/LayerNorm encoder "
                  "of 600 units, latent 200, a linear decoder, the composite prior (standard, "
                  "the previous encoder's posterior, wide; weights 0.15/0.75/0.1), KL weight "
                  "0.005 * |x| per user, alternating 3 encoder epochs (input dropout 0.5) and 1 "
                  "decoder epoch, Adam 5e-4 per block, batch 500 (the authors' settings); early "
                  "stopping on the carve's NDCG@10 (patience 40 epochs), refit on the training "
                  "part for the chosen epochs"))

register(Row("ensemble: EASE + Mult-DAE", "topn", fits.ease_dae_blend, grid=[{"lam": 400.0}],
             kind="ensemble", select_epochs=True,
             note="an ensemble, never counted as a single model: (1 - w) * EASE + w * Mult-DAE "
                  "on each user's standardised scores (mean 0, std 1 over the movies); EASE at "
                  "the EASE row's default lam 400, Mult-DAE as its row; w from "
                  f"{'/'.join(f'{w:g}' for w in fits.BLEND_WEIGHTS)} by the best carve NDCG@10 "
                  "(no coverage floor: with a carve coverage@10 >= 0.30 floor every split chose "
                  "w = 1, Mult-DAE alone); the refit keeps w and the DAE's epochs"))

# The README's recommended experiments as a user trains them (deepcf.study.parity): `deepcf.train`
# on the split files, each split's test figure against the row that is the same model
USER_RUNS = [
    UserRun("i_autorec_target", "rating", I_AUTOREC_TARGET.name, "rmse"),
    UserRun("edlae", "topn", EDLAE_SHIPPED.name, "ndcg@10"),
]

# ---------------------------------------------------------------------------------------------
# The rows of `make accuracy-scale` (deepcf.study.scale): one split at the Movies-Dataset scale,
# each row at its defaults (no grid), fitted in a process of its own for its time and memory.
# A model joins the table by appending a Row whose fit scales (a rating model as
# `fits.contender([...overrides])`, a ranking model as `fits.ranker([...])`, kind "contender").

ELSA = ["experiment=elsa"]
RATING_AT_SCALE = ["experiment=i_autorec_target"]
SCALE_MF = {"rank": 20, "reg": 15.0, "reg_bias": 5.0, "sweeps": 10}
SCALE_EASE_MOVIES = 10_000
# EDLAE on the SCALE_EASE_MOVIES most popular movies: deepcf.bench.full's EDLAE_AT_SCALE
EDLAE_SCALE = {"max_items": SCALE_EASE_MOVIES, "dropout": 0.85, "lam": 500.0,
               "lam_unit": "absolute", "emphasis": True, "pop_beta": 0.0}

SCALE_ROWS: list[Row] = [
    Row("user+item bias", "rating", fits.bias, grid=[SURPRISE_BIAS],
        note="mu + b_u + b_i by regularised ALS at Surprise's defaults"),
    Row("biased MF (ALS)", "rating", fits.mf, grid=[SCALE_MF],
        note="mu + b_u + b_i + p_u.q_i by ALS (rows in parallel, deepcf.kernels.als_side); "
             "rank 20 and 10 sweeps to keep it minutes at 26M ratings"),
    Row("I-AutoRec + residual target", "rating", fits.contender(RATING_AT_SCALE),
        kind="contender", grid=[{"epochs": 45}],
        note="`experiment=i_autorec_target` (the columns path, full-batch Rprop), 45 epochs: "
             "where a deepcf.train run's validation RMSE on movies_full had levelled off (0.9197 "
             "at epoch 3, 0.8268 at 20, 0.7797 at 30, 0.7717 at 40, 0.7707 at 44; about 28 s "
             "an epoch); no refit"),
    Row("popularity", "topn", fits.popularity,
        note="movies by training interaction count"),
    Row(f"EASE on the {SCALE_EASE_MOVIES:,} most popular movies", "topn", fits.ease_top,
        grid=[{"lam": 500.0, "max_items": SCALE_EASE_MOVIES}],
        note="EASE in float32 with an in-place Cholesky inverse (0.4 GB for 10K movies; the "
             "whole 45K catalogue would need 8 GB per copy); the other movies are never "
             "recommended; lam 500, Steck's (WWW 2019) setting for ML-20M"),
    Row(f"EDLAE on the {SCALE_EASE_MOVIES:,} most popular movies", "topn", fits.edlae,
        kind="contender", grid=[EDLAE_SCALE],
        note="`experiment=edlae model.net.max_items=10000 model.net.dropout=0.85 "
             "model.net.lam=500 model.net.lam_unit=absolute model.net.emphasis=true "
             "model.net.pop_beta=0`: the closed form in float32 with an in-place Cholesky "
             "inverse on the EASE row's movies; dropout the best of 0.33 / 0.5 / 0.7 / 0.85 / "
             "0.92 at lam 500 on the validation carve of this split's training part (NDCG@10 "
             "on 30,000 carve users: 0.2079 / 0.2102 / 0.2137 / 0.2162 / 0.2159; dropout 0, "
             "EASE, 0.2033; 15,000 movies at dropout 0.7 0.2136)"),
    Row("ELSA", "topn", fits.ranker(ELSA), kind="contender",
        grid=[{"epochs": 1, "model.net.rank": 1024, "data.batch_size": 4096,
               "model.optimizer.lr": 0.01}],
        note="`experiment=elsa model.net.rank=1024 data.batch_size=4096 "
             "model.optimizer.lr=0.01`, one epoch: the best of the settings tried on the "
             "validation carve of this split's training part (NDCG@10 on 30,000 carve users): "
             "rank 256, 1 epoch 0.1962; rank 1024, 1 epoch 0.2013; rank 1024, 2 epochs 0.2008 "
             "(EASE on the 10,000 most popular movies 0.2033 on the same carve)"),
]

register(Row("ELSA", "topn", fits.ranker(ELSA), kind="contender", select_epochs=True,
             note="`experiment=elsa`: rows are users, every rating an interaction, scores "
                  "b (A A^T - I) with A the row-normalised movies x 256 weight (EASE's zero "
                  "diagonal at rank 256; Vancura et al. 2022), the normalised MSE, Adam 0.1, "
                  "batch 128; early stopping on the carve's NDCG@10 (patience 10), refit on the "
                  "training part for the chosen epochs. Rank 256 and lr 0.1: the best carve "
                  "NDCG@10 of rank 256/1024 x lr 0.01/0.1 on split 0's carve. The ranking model "
                  "whose weights and training cost grow with movies x rank, not movies^2 "
                  "(docs/models.md)"))
