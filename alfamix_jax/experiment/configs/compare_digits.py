"""17 strategies on the embedded digits, 5 seeds: ALFA-Mix, its ablations and every registered
baseline except gcnal_uncertain (UncertainGCN; gcnal, CoreGCN, stands for GCNAL here).

    alfamix-jax run --config compare_digits --workdir runs/compare_digits
    alfamix-jax report runs/compare_digits

The demo's protocol (20 random initial labels, +20 per round, 10 rounds, the
original's MLP with a 256-d embedding, Adam 1e-3, batch 64, stop at 0.99 training
accuracy, re-initialised each round) with dropout 0.3 on the embedding so that
BALD's MC-dropout passes differ (every strategy trains the same model). The
README shows the table, the pairwise matrix and the plots this gives, with the
machine and the time it took.
"""
from alfamix_jax.experiment.config import DataConfig, ExperimentConfig, LoopConfig, ModelConfig
from alfamix_jax.experiment.training import TrainConfig

STRATEGIES = (
    "alfamix", "alfamix_learned", "alfamix_random",
    "alfamix_random_pick", "alfamix_top_alpha", "alfamix_labelled_anchors",
    "random", "entropy", "margin", "least_confidence", "bald",
    "coreset", "badge", "adversarial_deepfool", "gcnal", "cdal", "dropquery",
)


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="compare_digits",
        data=DataConfig(name="digits"),
        model=ModelConfig(name="mlp", embed_dim=256, dropout=0.3),
        train=TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=64, max_epochs=200, stop_accuracy=0.99),
        loop=LoopConfig(initial_size=20, initial_mode="random", budget=20, rounds=10),
        strategies=STRATEGIES,
        seeds=(1, 10, 100, 1000, 10000),
    )
