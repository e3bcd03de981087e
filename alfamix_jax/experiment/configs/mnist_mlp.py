"""The original README's example command on MNIST with the MLP.

    # once, to prepare MNIST in TFDS array_record form (needs network and the `prepare` extra):
    #   pip install -e ".[prepare]"
    #   python -c "import tensorflow_datasets as tfds; \
    #     tfds.builder('mnist', data_dir='DATA').download_and_prepare(file_format='array_record')"
    alfamix-jax run --config mnist_mlp --workdir runs/mnist_mlp --set data.data_dir=DATA

Original: `python main.py --data_name MNIST --n_init_lb 100 --n_query 100
--n_round 10 --learning_rate 0.001 --n_epoch 1000 --model mlp --strategy
AlphaMixSampling --alpha_opt --alpha_closed_form_approx --alpha_cap 0.2`.
Expect about 0.75 at 100 labels rising past 0.9 by 1100, ALFA-Mix above
random from the first rounds (the paper's MNIST MLP curves).
"""
from alfamix_jax.experiment.config import DataConfig, ExperimentConfig, LoopConfig, ModelConfig
from alfamix_jax.experiment.training import TrainConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="mnist_mlp",
        data=DataConfig(name="mnist", data_dir=None),  # required: --set data.data_dir=DATA
        model=ModelConfig(name="mlp", embed_dim=256),
        train=TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=64, max_epochs=1000, stop_accuracy=0.99),
        loop=LoopConfig(initial_size=100, budget=100, rounds=10),
        strategies=("alfamix", "random", "entropy"),
        seeds=(1, 10, 100, 1000, 10000),
    )
