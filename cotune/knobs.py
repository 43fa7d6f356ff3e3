"""The one declaration of every knob: name, type, default, valid range, search range, help.

The config schema (config.py), the CLI's `--set` overrides, the search space (tune) and the
report all read this table; nothing else declares a knob. Units go in the help text.

A knob with `search` set is searchable: a (low, high) range for numbers (log-scaled when
`log=True`) or a tuple of choices. `when` makes it conditional: it is only searched when the
named knob holds one of the listed values (momentum only for SGD-like optimizers, ...).
`tasks` limits it to some tasks (label cleaning only for classification); `modalities` limits it
to some modalities (numeric scaling only for tables); `choice_modalities` limits single choices
to some modalities (SMOTE only for tables); `text_only` to tables with text columns; `unless_metric` leaves it out under some ranking
metrics (label smoothing distorts the probabilities that log loss and AUC score). An empty `search` means the
choices are not declared here: model.family's are the registered families that fit the data
(cotune.models declares them per family; the search space fills them in).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    name: str                     # dotted path in the config: 'train.lr'
    type: type                    # float, int, bool, str, list, dict
    default: Any
    help: str
    choices: tuple | None = None  # allowed values for str knobs
    low: float | None = None      # valid range (inclusive unless open_low)
    high: float | None = None
    open_low: bool = False        # True: value must be > low
    optional: bool = False        # None is allowed
    search: tuple | None = None   # searchable range (low, high) or choices
    log: bool = False             # search on a log scale
    when: tuple = ()              # ((knob name, (values...)), ...): searched only under these conditions
    tasks: tuple = ()             # searched only for these tasks (empty: every task)
    modalities: tuple = ()        # searched only on these modalities (empty: every modality)
    choice_modalities: tuple = ()  # ((choice, (modalities...)), ...): that choice searched only on these
    unless_metric: tuple = ()     # not searched when search.metric is one of these
    text_only: bool = False       # searched only on tables with free-text columns

    @property
    def stage(self) -> str:
        return self.name.split(".")[0]


def _k(name, type, default, help, **kw) -> Knob:
    return Knob(name, type, default, help, **kw)


SGD_LIKE = ("sgd", "rmsprop")
ADAM_LIKE = ("adam", "adamw")
CLASSIFICATION = ("binary", "multiclass")
# the table preprocessing knobs a model.init_from run takes from its source (its fitted preprocessing comes with its
# weights): set to the source's or not at all, never searched; the text ones only where the source reads text
FROM_SOURCE = ("data.numeric", "data.embed_above")
FROM_SOURCE_TEXT = ("data.tokenizer", "data.vocab_size", "data.max_tokens")
# search.metric's choices (cotune.evaluate knows which tasks each fits and its direction)
METRICS = ("auto", "accuracy", "balanced_accuracy", "f1_macro", "f1", "roc_auc", "log_loss", "rmse", "mae", "r2",
           "robust_accuracy")

KNOBS: tuple[Knob, ...] = (
    # ---- data: where it comes from and how it is split
    _k("data.source", str, "sklearn:digits", "CSV / Parquet / .npz file, image folder, or a built-in: sklearn:digits, sklearn:iris, sklearn:wine, sklearn:breast_cancer, sklearn:diabetes, mnist1d"),
    _k("data.target", str, None, "target column of a table (built-ins know theirs)", optional=True),
    _k("data.task", str, "auto", "override the inferred task", choices=("auto", "binary", "multiclass", "regression")),
    _k("data.modality", str, "auto", "override the inferred modality", choices=("auto", "tabular", "image", "sequence")),
    _k("data.categorical", list, [], "table columns to treat as categorical whatever their dtype"),
    _k("data.text", list, None, "table columns of free text (tokenized on the training rows; the mlp reads them through model.text_encoder): null = detect them (string columns whose values average at least 3 words and are mostly distinct), [] = none (such columns are then categorical)", optional=True),
    _k("data.drop", list, [], "table columns to ignore (IDs, leaky or unwanted columns, ...; free text is read, see data.text)"),
    _k("data.image_size", int, 32, "image folder: images are resized to this many pixels per side", low=4, high=1024),
    _k("data.image_mode", str, "rgb", "image folder: colour channels", choices=("rgb", "grayscale")),
    _k("data.n_samples", int, 5000, "mnist1d: samples generated (80% train / 20% test, the paper's split)", low=100, high=10_000_000),
    _k("data.generator_seed", int, 42, "mnist1d: generator seed (42 = the paper's data)"),
    _k("data.split.val", float, 0.15, "fraction of rows for validation (early stopping, model choice)", low=0.0, high=0.5),
    _k("data.split.test", float, 0.15, "fraction of rows held out for the final test (ignored when the source has its own test split)", low=0.0, high=0.5),
    _k("data.split.seed", int, 0, "seed of the train/val/test split"),
    _k("data.split.column", str, None, "table column holding 'train' / 'val' / 'test' per row (overrides fractions)", optional=True),
    # ---- data: what the training part is made of (applied to the training part only)
    _k("data.fraction", float, 1.0, "use this seeded, stratified share of the training part (search fidelity, scaling)", low=0.0, high=1.0, open_low=True),
    _k("data.clean.duplicates", str, "keep", "drop exact duplicate training rows ('drop', also conflicting-label copies) or near duplicates too ('drop_near')", choices=("keep", "drop", "drop_near"), search=("keep", "drop", "drop_near")),
    _k("data.clean.leakage", str, "keep", "drop training rows that duplicate a validation or test row", choices=("keep", "drop"), search=("keep", "drop")),
    _k("data.clean.outlier_score", float, 1.0, "drop training rows whose outlier score (0.5 typical, near 1 anomalous) is at least this (1.0 = off)", low=0.5, high=1.0, open_low=True, search=(0.55, 1.0)),
    _k("data.clean.label_issues", str, "keep", "training rows whose label looks wrong (cleanlab on out-of-fold probabilities): keep, drop or relabel to the proxy's prediction", choices=("keep", "drop", "relabel"), search=("keep", "drop", "relabel"), tasks=CLASSIFICATION),
    _k("data.clean.label_threshold", float, 0.0, "act only on flagged rows whose label-issue score (1 - label quality) is at least this", low=0.0, high=0.99, search=(0.0, 0.9), when=(("data.clean.label_issues", ("drop", "relabel")),), tasks=CLASSIFICATION),
    _k("data.clean.proxy", str, "auto", "the label-issue proxy, cross-validated over every row outside the test part: linear, gbdt (LightGBM), net (a small network of the modality's family), or auto = the better of linear and gbdt by out-of-fold accuracy on tables, net on images and sequences", choices=("auto", "linear", "gbdt", "net")),
    _k("data.clean.val", str, "keep", "validation rows whose label looks wrong: keep, drop or relabel them (what ranks trials and stops training; never searched, test rows are never changed)", choices=("keep", "drop", "relabel")),
    _k("data.clean.min_trust", str, "high", "label cleaning acts only when the audit's trust in its label flags is at least this: low, medium or high (trust: how well the proxy predicts the labels it does not flag; a proxy that finds the data hard flags hard examples as much as wrong labels)", choices=("low", "medium", "high")),
    _k("data.balance", str, "none", "class imbalance: loss weights, over/under-sampling, SMOTE (tables), class-balanced batches, or focal loss", choices=("none", "class_weights", "oversample", "undersample", "smote", "balanced_batches", "focal"), search=("none", "class_weights", "oversample", "undersample", "balanced_batches", "focal"), tasks=CLASSIFICATION, choice_modalities=(("smote", ("tabular",)),)),
    _k("data.augment.policy", str, "none", "augmentation: 'auto' turns on the modality's default ops (images flip+crop+cutout; sequences shift+scale+jitter; tables noise)", choices=("none", "auto"), search=("none", "auto")),
    _k("data.augment.strength", float, 0.5, "magnitude of every 'auto' op, 0..1", low=0.0, high=1.0, search=(0.1, 1.0), when=(("data.augment.policy", ("auto",)),)),
    *(_k(f"data.augment.{op}", float, None, f"{where}: strength of '{op}' (overrides the policy; 0 = off)", low=0.0, high=1.0, optional=True)
      for op, where in (("flip", "images"), ("crop", "images"), ("cutout", "images"), ("affine", "images"), ("cutmix", "images"),
                        ("mixup", "images and tables"), ("shift", "sequences"), ("scale", "sequences"), ("jitter", "sequences"),
                        ("mask", "sequences"), ("noise", "tables"), ("token_drop", "table text columns"),
                        ("span_mask", "table text columns"))),
    # ---- data: preprocessing, fitted on the training part only
    _k("data.numeric", str, "standard", "tables: numeric column scaling after median imputation: standard ((x - mean) / std), robust (median / IQR, then smoothly clipped into (-3, 3)) or quantile (to a normal distribution)", choices=("standard", "robust", "quantile"), search=("standard", "robust", "quantile"), modalities=("tabular",)),
    _k("data.embed_above", int, 8, "tables, for model families that read the column layout: a categorical column with more than this many kept categories becomes one integer-code column (a learned embedding) instead of one-hot columns", low=1, high=1_000_000, modalities=("tabular",)),
    _k("data.tokenizer", str, "bpe", "tables with text columns: how the training rows' texts are tokenized (saved in preprocess.json): bpe (byte-pair encoding), wordpiece or word (whole words), trained with the tokenizers library, or ngrams (a bag of word 1-2-grams and character 2-5-grams weighted by their TF-IDF on the training rows: fastText's input with the classic weights; read by the bag encoder)", choices=("bpe", "wordpiece", "word", "ngrams"), search=("bpe", "wordpiece", "word", "ngrams"), modalities=("tabular",), text_only=True),
    _k("data.vocab_size", int, 4000, "tables with text columns: the tokenizer's vocabulary size, padding and unknown tokens included (the training texts may give fewer; ngrams: a quarter word n-grams, the rest character n-grams, the most frequent)", low=16, high=1_000_000, search=(1000, 64000), log=True, modalities=("tabular",), text_only=True),
    _k("data.max_tokens", int, 64, "tables with text columns: tokens kept per text (longer texts are cut at the end, shorter ones padded; ngrams: the heaviest n-grams)", low=1, high=4096, search=(16, 256), log=True, modalities=("tabular",), text_only=True),
    _k("data.target_transform", str, "standard", "regression: what the model learns of the target: standard ((y - mean) / std), log (log1p of the target shifted to >= 0, standardized) or quantile (to a normal distribution, standardized); predictions come back in target units", choices=("standard", "log", "quantile"), search=("standard", "log", "quantile"), tasks=("regression",)),
    # ---- model: one family, one size (width x depth)
    _k("model.family", str, "mlp", "model family from the registry (`cotune models`)", search=()),
    _k("model.width", int, 64, "hidden units / channels per layer: the size knob", low=1, high=8192, search=(16, 256), log=True),
    _k("model.depth", int, 2, "hidden layers / conv stages / recurrent layers (mlp depth 0 = linear model)", low=0, high=64, search=(1, 4)),
    _k("model.dropout", float, 0.1, "dropout probability", low=0.0, high=0.95, search=(0.0, 0.5)),
    _k("model.norm", str, "none", "normalization layers", choices=("none", "batch", "layer"), search=("none", "batch", "layer")),
    _k("model.activation", str, "relu", "activation function", choices=("relu", "gelu", "tanh", "silu", "selu", "mish"), search=("relu", "gelu", "silu", "selu")),
    _k("model.kernel_size", int, 5, "cnn1d: kernel of the first convolution", low=1, high=63, search=(3, 9), when=(("model.family", ("cnn1d",)),)),
    _k("model.pool", str, "auto", "sequence families: how positions are reduced before the head", choices=("auto", "flatten", "mean", "last"), search=("auto", "flatten", "mean"), when=(("model.family", ("cnn1d", "gru", "lstm", "transformer")),)),
    _k("model.bidirectional", bool, False, "gru / lstm: read the sequence both ways", search=(False, True), when=(("model.family", ("gru", "lstm")),)),
    _k("model.heads", int, 4, "transformer: attention heads (reduced to divide width)", low=1, high=64),
    _k("model.num_embedding", str, "none", "mlp on tables: embed each numeric feature before the first layer: 'periodic' (trainable-frequency cos/sin features) or 'piecewise' (piecewise-linear encoding on training-quantile bins), each followed by a per-feature linear layer and ReLU", choices=("none", "periodic", "piecewise"), search=("none", "periodic", "piecewise"), when=(("model.family", ("mlp",)),), choice_modalities=(("periodic", ("tabular",)), ("piecewise", ("tabular",)))),
    _k("model.embedding_dim", int, 8, "mlp on tables: size of each categorical embedding and of each numeric feature embedding", low=1, high=256),
    _k("model.text_encoder", str, "bag", "mlp on tables with text columns: how each text's token embeddings become one vector joined with the other columns' features: bag (their mean, fastText style), cnn1d (a convolution, max over positions), gru / lstm (bidirectional, mean over positions) or transformer (one self-attention layer, mean over positions)", choices=("bag", "cnn1d", "gru", "lstm", "transformer"), search=("bag", "cnn1d", "gru", "lstm", "transformer"), when=(("model.family", ("mlp",)), ("data.tokenizer", ("bpe", "wordpiece", "word"))), modalities=("tabular",), text_only=True),
    _k("model.text_width", int, 64, "mlp on tables with text columns: the token embedding width, and the size of each text's vector", low=1, high=4096, search=(16, 256), log=True, when=(("model.family", ("mlp",)),), modalities=("tabular",), text_only=True),
    _k("model.text_linear", float, 0.0, "mlp on tables with n-gram text (data.tokenizer=ngrams): C, the inverse L2 strength, of a linear path from each text's n-grams straight to the outputs, fitted convexly on the training rows before the network trains (LogisticRegression; Ridge at alpha 1/C for regression) and then frozen, the network's output layer starting at zero so that training starts from that linear model and the network learns what it leaves (0 = off)", low=0.0, high=1e6, search=(0.3, 100.0), log=True, when=(("model.family", ("mlp",)), ("data.tokenizer", ("ngrams",))), modalities=("tabular",), text_only=True, unless_metric=("robust_accuracy",)),
    _k("model.ensemble", int, 1, "mlp: k members sharing the hidden layers, each with its own input scaling and output head; the prediction averages them (1 = off)", low=1, high=64, search=(1, 8), when=(("model.family", ("mlp",)),)),
    _k("model.init_from", str, None, "start from this finished run directory (a `cotune train --out`; a search directory, for its final model; one of its trials/NNNNN/): its fitted preprocessing and its weights. Same family, modality, sample shape or table columns (and data.numeric, data.embed_above; with text columns data.tokenizer, data.vocab_size, data.max_tokens), and model knobs that give the same layers (width, depth, norm, dropout on or off, ...); its output layer is copied when the classes (or a regression target) are the same, else re-initialized", optional=True),
    # ---- train: optimizer, schedule, loss, regularization, stopping
    _k("train.optimizer", str, "adamw", "optimizer", choices=("sgd", "rmsprop", "adagrad", "adam", "adamw"), search=("sgd", "rmsprop", "adam", "adamw")),
    _k("train.lr", float, 3e-3, "peak learning rate", low=0.0, high=10.0, open_low=True, search=(1e-4, 3e-2), log=True),
    _k("train.momentum", float, 0.9, "sgd / rmsprop momentum (0 = plain SGD)", low=0.0, high=0.999, search=(0.0, 0.99), when=(("train.optimizer", SGD_LIKE),)),
    _k("train.nesterov", bool, False, "sgd: Nesterov momentum (needs momentum > 0)", search=(False, True), when=(("train.optimizer", ("sgd",)),)),
    _k("train.beta1", float, 0.9, "adam / adamw: first-moment decay", low=0.0, high=0.9999, search=(0.8, 0.95), when=(("train.optimizer", ADAM_LIKE),)),
    _k("train.beta2", float, 0.999, "adam / adamw: second-moment decay", low=0.0, high=0.99999, search=(0.95, 0.9999), when=(("train.optimizer", ADAM_LIKE),)),
    _k("train.weight_decay", float, 1e-4, "weight decay: decoupled for adamw, L2 added to the gradient for the others", low=0.0, high=10.0, search=(1e-6, 1e-1), log=True),
    _k("train.l1", float, 0.0, "L1 penalty on weights, added to the loss (per weight, not averaged)", low=0.0, high=1.0, search=(1e-8, 1e-4), log=True),
    _k("train.schedule", str, "cosine", "learning-rate schedule over all steps", choices=("constant", "step", "exponential", "cosine", "onecycle", "coslog4"), search=("constant", "cosine", "onecycle", "coslog4")),
    _k("train.warmup", float, 0.0, "linear warmup, as a fraction of all steps", low=0.0, high=0.5, search=(0.0, 0.2)),
    _k("train.step_every", int, 10, "step schedule: epochs between decays", low=1, high=100000),
    _k("train.gamma", float, 0.1, "step / exponential schedules: decay factor (step: per step_every epochs; exponential: over the whole run)", low=0.0, high=1.0, open_low=True),
    _k("train.loss", str, "auto", "loss: auto = cross_entropy (classification) or mse (regression); for noisy labels (classification) gce (generalized cross-entropy, Zhang & Sabuncu 2018) or sce (symmetric cross-entropy, Wang et al. 2019); data.balance=focal replaces it with the focal loss", choices=("auto", "cross_entropy", "focal", "gce", "sce", "mse", "huber"), search=("auto", "gce", "sce"), tasks=CLASSIFICATION),
    _k("train.gce_q", float, 0.7, "gce loss: per row (1 - p_y^q) / q, p_y the predicted probability of the row's label; q -> 0 is cross-entropy, q = 1 is the mean absolute error of the probabilities (robust to wrong labels, slower to fit)", low=0.0, high=1.0, open_low=True, search=(0.3, 0.9), when=(("train.loss", ("gce",)),), tasks=CLASSIFICATION),
    _k("train.sce_alpha", float, 0.1, "sce loss: weight of its cross-entropy term in alpha * CE + beta * RCE, where RCE = 4 * (1 - p_y) (reverse cross-entropy, log 0 taken as -4); searched with beta fixed, as only their ratio matters to Adam-like optimizers", low=0.0, high=100.0, search=(0.05, 1.0), log=True, when=(("train.loss", ("sce",)),), tasks=CLASSIFICATION),
    _k("train.sce_beta", float, 1.0, "sce loss: weight of its reverse cross-entropy term (see train.sce_alpha)", low=0.0, high=100.0),
    _k("train.label_smoothing", float, 0.0, "cross-entropy label smoothing (cross_entropy and auto only; the other losses ignore it)", low=0.0, high=0.5, search=(0.0, 0.2), when=(("train.loss", ("auto", "cross_entropy")),), tasks=CLASSIFICATION, unless_metric=("log_loss", "roc_auc")),
    _k("train.focal_gamma", float, 2.0, "focal loss: focusing exponent (searched when data.balance=focal)", low=0.0, high=10.0, search=(0.5, 4.0), when=(("data.balance", ("focal",)),), tasks=CLASSIFICATION),
    _k("train.huber_delta", float, 1.0, "huber loss: transition point, in standardized target units", low=0.0, high=100.0, open_low=True),
    _k("train.freeze_epochs", int, 0, "train only the output layer for the first this many epochs (the rest frozen: no gradients, no weight decay, batch-norm statistics kept), then every layer; for model.init_from", low=0, high=100000),
    _k("train.backbone_lr", float, 1.0, "factor on the learning rate of every parameter outside the output layer (the schedule scales both): below 1 to fine-tune model.init_from's weights gently", low=0.0, high=100.0, open_low=True),
    _k("train.adversarial", str, "none", "adversarial training: 'fgsm' (one signed-gradient step of train.adv_epsilon) or 'pgd' (train.adv_steps projected steps from a random start) replaces train.adv_mix of each batch by its worst case in the L-inf ball of train.adv_epsilon around it (standardized inputs; a table's one-hot and code columns untouched), after the augmentation; searched when search.metric=robust_accuracy", choices=("none", "fgsm", "pgd"), search=("none", "fgsm", "pgd"), unless_metric=tuple(m for m in METRICS if m != "robust_accuracy")),
    _k("train.adv_epsilon", float, 0.0, "the stated L-inf radius, in standardized input units, of adversarial training and of robust_accuracy (a 10-step PGD attack on the validation and test rows, reported for classification when > 0); a table's text columns are attacked on their token embeddings, within this many times the std of the embedding table", low=0.0, high=100.0),
    _k("train.adv_steps", int, 7, "pgd adversarial training: projected gradient steps per attacked batch (each costs a forward and backward pass)", low=1, high=100),
    _k("train.adv_mix", float, 0.5, "adversarial training: the share of each batch replaced by its adversarial version (0.5: clean and adversarial rows weigh the same, as Goodfellow et al. 2015)", low=0.0, high=1.0, open_low=True),
    _k("train.grad_clip", float, 0.0, "clip the gradient norm to this (0 = off)", low=0.0, high=1e6),
    _k("train.epochs", int, 30, "maximum epochs (passes over the training part)", low=1, high=100000),
    _k("train.batch_size", int, 128, "samples per step", low=1, high=1_000_000, search=(32, 512), log=True),
    _k("train.patience", int, 10, "early stopping: epochs without validation improvement before stopping (0 = off); best weights are restored", low=0, high=100000),
    _k("train.val_every", int, 1, "validate every this many epochs (and after the last); early stopping and the best weights see only those epochs, and patience still counts epochs", low=1, high=100000),
    _k("train.monitor", str, "metric", "early stopping watches the validation 'metric' (search.metric: by default accuracy / rmse) or 'loss'", choices=("metric", "loss")),
    # ---- search: how `cotune fit` explores the knobs above (never searched itself)
    _k("search.metric", str, "auto", "what ranks runs and trials, stops training early, prunes, picks the best trial and decides the ensemble: auto = accuracy (classification) or rmse (regression); f1 (the second class's F1), f1_macro and balanced_accuracy are label metrics: a binary model's decision threshold is tuned on validation for them", choices=METRICS),
    _k("search.budget", str, None, "wall-clock budget for the whole fit, final training included: '90s', '10m', '1h'", optional=True),
    _k("search.trials", int, None, "stop after this many finished trials (complete, pruned or failed)", low=1, high=1_000_000, optional=True),
    _k("search.workers", int, 1, "trials run at once, each in its own worker process (CPU threads are split between them)", low=1, high=256),
    _k("search.population", str, "1", "trials a worker trains at once as one batched model (mlp, cnn1d, cnn2d; the others one by one): they share the knobs that fix the model's shape (family, width, depth, norm, activation, kernel, pool, batch size, optimizer) and differ in every other; an integer K, or auto = the largest K whose probe trains K members at least 1.2x faster than one by one (1 otherwise)"),
    _k("search.final_nproc", int, 1, "processes that train the final model (each member of an ensemble in turn): torchrun + DistributedDataParallel, each process on its share of every batch, as `cotune train --nproc`; at most the CPU cores (the GPUs on CUDA); 1 = in the search's own process", low=1, high=1024),
    _k("search.sampler", str, "tpe", "how knobs are proposed: multivariate TPE, random, grid (over choice knobs), CMA-ES, NSGA-II (two objectives)", choices=("tpe", "random", "grid", "cmaes", "nsga2")),
    _k("search.pruner", str, "hyperband", "stop weak trials early, on epochs: hyperband, successive halving, median, or none", choices=("hyperband", "halving", "median", "none")),
    _k("search.objective", str, "quality", "'quality' (validation metric), or a second objective: 'quality,size' (parameters) / 'quality,latency' (CPU ms per sample)", choices=("quality", "quality,size", "quality,latency")),
    _k("search.fidelity", str, "epochs", "what a weak trial is stopped early on: 'epochs' (the pruner watches each epoch) or 'data' (each trial trains on 1/9, then 1/3, then all of its training rows, and the pruner judges each step)", choices=("epochs", "data")),
    _k("search.warm_start", bool, True, "start with one configuration chosen for the data's modality (the knob defaults otherwise), then let the sampler propose"),
    _k("search.seed", int, 0, "seed of the sampler"),
    _k("search.mlflow", str, None, "MLflow tracking URI for the search (a run per trial under one parent run): null = SQLite in the search directory (mlflow.db), 'none' = no tracking", optional=True),
    _k("search.reeval", int, 3, "before the final refit, re-evaluate the top-n distinct complete trials (by validation score) by k-fold cross-validation over train + validation, each for its own early-stopping epoch count; the best mean score picks the trial the final model refits (0 or 1 = off: the best on validation). Skipped, with the reason in fit.json, when the budget's remainder does not cover it", low=0, high=20),
    _k("search.reeval_folds", int, 3, "folds of search.reeval's cross-validation (stratified for classification, seeded by data.split.seed)", low=2, high=20),
    _k("search.top_k", int, 3, "soft-voting ensemble of the top-k trials, kept when it beats the best single model on validation (1 = off)", low=1, high=20),
    _k("search.space", dict, {}, "narrow knobs: {knob: [choices...]} or {knob: [low, high]}; knobs you set elsewhere in the config are fixed"),
    # ---- scale: `cotune scale`, the model-size x data-size study on a search's best configuration
    _k("scale.sizes", int, 4, "model sizes in the grid (widths chosen so parameter counts are evenly spaced on a log scale)", low=2, high=32),
    _k("scale.size_span", float, 16.0, "largest / smallest parameter count of the grid; the largest is the configuration's own size", low=2.0, high=1e6),
    _k("scale.fractions", int, 4, "training-set sizes in the grid (shares of the training part, evenly spaced on a log scale)", low=2, high=32),
    _k("scale.fraction_span", float, 8.0, "largest / smallest training-set size of the grid", low=2.0, high=1e6),
    _k("scale.max_fraction", float, 1.0, "the grid's largest share of the training part (below 1 keeps data back to check the advice on)", low=0.0, high=1.0, open_low=True),
    _k("scale.epoch_factor", float, 3.0, "each grid run may train this many times the configuration's epochs (a share of 1/k: k times more, with k times the patience); early stopping on validation loss ends it when it stops improving, so the fit sees trained models, not cut-short ones", low=0.1, high=1000.0),
    _k("scale.seeds", int, 2, "seeds per grid point", low=1, high=100),
    _k("scale.law", str, "interaction", "the joint law's form: interaction E + ((A/N^alpha)^(1/q) + (B/D^beta)^(1/q))^q with q fitted (q = 1 is the additive law, so it includes it), additive E + A/N^alpha + B/D^beta, or auto: the one that better predicts the largest corners of the smaller grids (fitted without them; the study's own corner never takes part)", choices=("auto", "additive", "interaction")),
    _k("scale.compute", float, None, "training FLOPs to plan the compute-optimal model and data size for (null = 10x the current point's)", low=0.0, open_low=True, optional=True),
    _k("scale.epochs_check", str, "auto", "train the current point again with 2x the epochs (each seed) to measure that option: on, off, or auto = when the learning-rate schedule follows the run's length (cosine, exponential, onecycle, warmup), so that its learning curve cannot be read forward", choices=("auto", "on", "off")),
    _k("scale.extrapolate", bool, False, "sources that generate their data (mnist1d): also train the largest model on 2x and 4x the rows and compare with the fit's prediction"),
    # ---- runtime: resolved once, logged in env.json
    _k("runtime.device", str, "auto", "auto = cuda when available, else cpu", choices=("auto", "cpu", "cuda")),
    _k("runtime.precision", str, "auto", "auto = bf16 autocast on CUDA, fp32 on CPU", choices=("auto", "fp32", "bf16")),
    _k("runtime.threads", int, 1, "CPU threads per training process (1 is fastest on small models; parallelism comes from processes)", low=1, high=256),
    _k("runtime.seed", int, 0, "seed of weights, shuffling and dropout"),
    _k("runtime.compile", bool, False, "torch.compile the model (CUDA; measure before enabling)"),
    _k("runtime.progress", bool, True, "show a progress bar"),
)

BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}


def searchable(stage: str | None = None) -> list[Knob]:
    """Knobs with a search range, optionally of one stage ('data', 'model', 'train')."""
    return [k for k in KNOBS if k.search is not None and (stage is None or k.stage == stage)]
