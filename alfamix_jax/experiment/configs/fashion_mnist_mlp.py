"""The original README's protocol, exactly, on Fashion-MNIST (60k pool, 10k test).

    apt-get install dataset-fashion-mnist     # the standard IDX files, no download at run time
    alfamix-jax run --config fashion_mnist_mlp --workdir runs/fashion_mnist_mlp
    alfamix-jax report runs/fashion_mnist_mlp

(IDX files elsewhere: `--set data.data_dir=DIR`.) 100 random initial labels,
+100 per round, 10 rounds; the original's MLP (Linear(784, 256) + ReLU is the
embedding, then a linear head); Adam lr 1e-3, batch 64, up to 1000 epochs,
stopping once training accuracy reaches 0.99, re-initialised to the same
weights every round; seeds 1, 10, 100, 1000, 10000; ALFA-Mix closed form
(cap step 0.2) and learned alpha, random, entropy. The original's command:
`python main.py --n_init_lb 100 --n_query 100 --n_round 10 --learning_rate
0.001 --n_epoch 1000 --model mlp --strategy AlphaMixSampling --alpha_opt
--alpha_closed_form_approx --alpha_cap 0.2`. Expect the curves to rise from
about 0.6-0.7 at 100 labels to about 0.8 at 1100, ALFA-Mix at or above random.
"""
from alfamix_jax.experiment.config import DataConfig, ExperimentConfig, LoopConfig, ModelConfig
from alfamix_jax.experiment.training import TrainConfig
from alfamix_jax.selection.settings import SelectorSettings


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="fashion_mnist_mlp",
        data=DataConfig(name="fashion_mnist"),
        model=ModelConfig(name="mlp", embed_dim=256),
        train=TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=64, max_epochs=1000, stop_accuracy=0.99,
                          warm_start=False),
        loop=LoopConfig(initial_size=100, initial_mode="random", budget=100, rounds=10),
        alfamix=SelectorSettings(alpha_cap_step=0.2),
        strategies=("alfamix", "alfamix_learned", "random", "entropy"),
        seeds=(1, 10, 100, 1000, 10000),
    )
