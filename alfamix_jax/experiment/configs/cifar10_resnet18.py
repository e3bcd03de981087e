"""CIFAR-10 with ResNet-18 (CIFAR variant), the paper's image setting.

    # once: prepare cifar10 as TFDS array_record in DATA (see mnist_mlp.py)
    alfamix-jax run --config cifar10_resnet18 --workdir runs/cifar10_resnet18 --set data.data_dir=DATA

The original's CLI defaults: Adam, batch 64, up to 200 epochs stopping at
training accuracy 0.99, re-initialised every round, 100 initial labels and
+100 per round (the paper also reports larger budgets: set loop.budget and
loop.initial_size). Learning rate 1e-3 (the original's CLI default is 1e-2;
its README example uses 1e-3). This is a GPU job: on the 2-core CPU one round
of ResNet-18 training takes tens of minutes. Expect about 0.2-0.25 accuracy
at 100 labels, rising with every round, ALFA-Mix above random and entropy.
"""
from alfamix_jax.experiment.config import DataConfig, ExperimentConfig, LoopConfig, ModelConfig
from alfamix_jax.experiment.training import TrainConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig(
        name="cifar10_resnet18",
        data=DataConfig(name="cifar10", data_dir=None),  # required: --set data.data_dir=DATA
        model=ModelConfig(name="resnet18"),
        train=TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=64, max_epochs=200, stop_accuracy=0.99),
        loop=LoopConfig(initial_size=100, budget=100, rounds=10),
        strategies=("alfamix", "random", "entropy"),
        seeds=(1, 10, 100, 1000, 10000),
    )
