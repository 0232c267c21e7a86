"""Keys that cross the wire between the server and ClientApps, defined once."""

NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"
TRAIN_LOSS = "train_loss"
STEPS = "steps"
EXAMPLES_SEEN = "examples-seen"  # training samples processed (charged as compute time)
TIME_BUDGET = "time-budget"  # partial_work: virtual compute seconds the client may use
SECONDS_PER_SAMPLE = "seconds-per-sample"  # partial_work: this client's cost per sample
TRAIN_SECONDS = "train-seconds"  # wall seconds of local training (reported, not charged)
ENCODE_SECONDS = "encode-seconds"  # wall seconds spent encoding the update
EVAL_LOSS = "eval_loss"
EVAL_ACC = "eval_acc"
PROXIMAL_MU = "proximal-mu"
ALGORITHM = "fedsim-algorithm"  # a stateful client algorithm: "scaffold", "fedper", "ditto", "apfl"
PERSONAL_LAYERS = "personal-layers"  # FedPer: comma-separated parameter-name prefixes kept on clients
DITTO_LAMBDA = "ditto-lambda"  # Ditto: the personal model's proximal weight
APFL_ALPHA = "apfl-alpha"  # APFL: the initial mixing weight of the personal model
APFL_ADAPTIVE = "apfl-adaptive"  # APFL: whether each client learns its own alpha
SCAFFOLD_C = "scaffold-c"  # SCAFFOLD: the server control variate (ArrayRecord in train messages)
SCAFFOLD_DC = "scaffold-dc"  # SCAFFOLD: a client's control-variate change (ArrayRecord in replies)
LABEL_FLIP = "fedsim-label-flip"  # a Byzantine label-flipping client (scenarios.byzantine)

# Train-config overrides a ClientApp accepts from the strategy's ConfigRecord.
LR = "lr"
LOCAL_EPOCHS = "local-epochs"
LOCAL_STEPS = "local-steps"
BATCH_SIZE = "batch-size"

# node_config keys (Flower's own names).
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

# Record names in messages.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# Names under which user ClientApps commonly report metrics, tried in order.
LOSS_ALIASES = (TRAIN_LOSS, "loss", "train-loss")
EVAL_LOSS_ALIASES = (EVAL_LOSS, "loss", "eval-loss", "test_loss")
EVAL_ACC_ALIASES = (EVAL_ACC, "accuracy", "acc", "eval-acc", "eval_accuracy", "test_acc")


def is_personal(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether array ``name`` belongs to the ``PERSONAL_LAYERS`` prefixes (``"3"`` covers
    ``"3.weight"`` and ``"3.bias"``): what FedPer's client keeps and its server never sends."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)
